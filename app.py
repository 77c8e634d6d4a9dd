"""The PixelGPT demo as a Hugging Face Space (gradio SDK), or locally: `python app.py`.

PIXELGPT_DEMO_MODEL names the models: Hub repo ids or folders, several separated by commas (default: the
folder pixelgpt-fashion, which `pixelgpt train --output_dir pixelgpt-fashion` writes). On a Space, set it as a
variable in the Space's settings and list `pixelgpt[demo]` (installed from wherever the package lives) in the
Space's requirements.txt. The address and port come from gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which
Spaces set.

The demo has no login: whoever reaches it (everyone, on a public Space) runs the models on this machine. To ask for a
user name and password, set PIXELGPT_DEMO_AUTH to `user:password` (on a Space, as a secret).
"""

import os

from pixelgpt.demo import launch, parse_auth

auth = os.environ.get("PIXELGPT_DEMO_AUTH")
launch([name.strip() for name in os.environ.get("PIXELGPT_DEMO_MODEL", "pixelgpt-fashion").split(",") if name.strip()],
       auth=parse_auth(auth, "PIXELGPT_DEMO_AUTH") if auth else None)
