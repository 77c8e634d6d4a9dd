"""Sequence layouts: how a batch of processor ids `(B, 1 + N)` becomes the rows the network reads and the tokens
it predicts, for each task. Training (`pixelgpt.training`) and scoring (`score_images`) both call `task_inputs`, so
a model is scored in exactly the layout it was trained in.

- raster / k-ahead ("generate", and the conditional tasks with k = 1): row t holds token t - k, predicts token t;
- any order ("inpaint"): row t holds token `order[t - 1]`, predicts `order[t]`, with a random order per image in
  which a random rectangle (the shape of inpainting masks) or the scored pixels come last (in random or raster
  order, or everything in raster order with the last group after the rest: the config's `inpaint_fill_order`).

The `*_inputs` functions return keyword arguments for `model(**inputs)` plus `labels`, in the order of the rows;
`aligned_condition_weights` says which condition cells lie under each row's target pixel.
"""

import torch


def k_ahead_inputs(input_ids: torch.LongTensor, k: int) -> dict:
    """Row t holds token t - k (the first k rows are start tokens at positions -k..-1) and predicts token t.
    k = 1 is the usual raster model."""
    batch, n = input_ids.shape[0], input_ids.shape[1] - 1
    rows = torch.cat([input_ids[:, :1].expand(batch, k), input_ids[:, 1 : 1 + n - k]], dim=1)  # (B, N)
    targets = torch.arange(n, device=input_ids.device).expand(batch, n)  # (B, N)
    return dict(input_ids=rows, input_positions=targets - k, target_positions=targets, labels=input_ids[:, 1:])


def random_orders(last: torch.BoolTensor, tokens_per_pixel: int, generator: torch.Generator | None = None,
                  fill_order: str = "random") -> torch.LongTensor:
    """Generation orders, `(B, N)` token indices, from a `(B, pixels)` mask: pixels where `last` is False come
    first in random order, then those where it is True, in random order or (`fill_order="raster"`) row by row;
    `"raster_both"` puts both groups row by row. A pixel's sub-pixel tokens stay together in R, G, B order."""
    noise = torch.rand(last.shape, generator=generator, device=last.device)  # (B, P) in [0, 1)
    rising = torch.arange(last.shape[1], device=last.device) / last.shape[1]  # (P,) in [0, 1)
    if fill_order == "raster":  # keys in [1, 2) rising with the pixel index sort the last group in raster order
        noise = torch.where(last, rising, noise)
    elif fill_order == "raster_both":  # and keys in [0, 1) rising too sort the first group the same way
        noise = rising.expand_as(noise)
    pixels = (noise + last.float()).argsort(dim=1)  # (B, P)
    t = tokens_per_pixel
    return (pixels[..., None] * t + torch.arange(t, device=last.device)).flatten(1)  # (B, N)


def last_tokens_order(last: torch.BoolTensor, tokens_per_pixel: int, generator: torch.Generator | None = None,
                      fill_order: str = "random") -> torch.LongTensor:
    """`random_orders` from a `(B, N)` token mask (every sub-pixel token of a pixel marked alike): the marked
    pixels last. Inpainting draws the unknown pixels last; scoring scores the masked ones last."""
    return random_orders(last.view(len(last), -1, tokens_per_pixel)[..., 0], tokens_per_pixel, generator, fill_order)


def random_boxes(batch: int, image_size: int, probability: float, generator: torch.Generator | None = None,
                 device=None, sides: tuple[float, float] = (0.0, 1.0)) -> torch.BoolTensor:
    """`(batch, pixels)` masks: with `probability` a random rectangle, else empty. Its height and width are uniform
    between `sides` (fractions of `image_size`, at least 1 pixel; the default: 1..image_size)."""

    def draw(high):  # uniform integers in [0, high) per row
        return (torch.rand(batch, generator=generator, device=device) * high).long()

    low = max(1, round(sides[0] * image_size))
    high = max(low, round(sides[1] * image_size))
    height, width = draw(high - low + 1) + low, draw(high - low + 1) + low
    top, left = draw(image_size - height + 1), draw(image_size - width + 1)
    used = torch.rand(batch, generator=generator, device=device) < probability
    grid = torch.arange(image_size, device=device)
    rows = (grid >= top[:, None]) & (grid < (top + height)[:, None])  # (B, S)
    cols = (grid >= left[:, None]) & (grid < (left + width)[:, None])  # (B, S)
    return (rows[:, :, None] & cols[:, None, :] & used[:, None, None]).flatten(1)  # (B, S*S)


def any_order_inputs(input_ids: torch.LongTensor, order: torch.LongTensor) -> dict:
    """Row 0 holds the start token and predicts token `order[0]`; row t holds `order[t - 1]` and predicts
    `order[t]`: the query knows which pixel it draws (target-position queries), so any set of known pixels, on any
    side, can condition any other."""
    batch = input_ids.shape[0]
    tokens = input_ids[:, 1:].gather(1, order)  # (B, N) in generation order
    start = torch.full((batch, 1), -1, dtype=torch.long, device=input_ids.device)
    return dict(input_ids=torch.cat([input_ids[:, :1], tokens[:, :-1]], dim=1),
                input_positions=torch.cat([start, order[:, :-1]], dim=1), target_positions=order, labels=tokens)


def aligned_condition_weights(config, target_positions: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The condition at each target token's pixel, read bilinearly off the grid of condition cells (pixels, or
    patches with `condition_patch_size`): the indices of the four cells around the pixel's centre and their
    weights, `(..., 4)` each. On a grid of the image's own size (colorize, same-size translation) that is the cell
    itself with weight 1; under a smaller grid (upscale) the covering pixel weighs most and its neighbours say which
    way the image changes."""
    size, side = config.image_size, config.condition_grid_size
    pixel = (target_positions // config.tokens_per_pixel).clamp(0, size * size - 1)

    def axis(coordinate):  # the pixel centre in condition-grid coordinates, between two condition pixels
        u = ((coordinate.float() + 0.5) * side / size - 0.5).clamp(0, side - 1)
        low = u.floor().long()
        return low, (low + 1).clamp(max=side - 1), u - low

    top, bottom, down = axis(pixel // size)
    left, right, across = axis(pixel % size)
    index = torch.stack([top * side + left, top * side + right, bottom * side + left, bottom * side + right], -1)
    weight = torch.stack([(1 - down) * (1 - across), (1 - down) * across, down * (1 - across), down * across], -1)
    return index, weight


def task_inputs(config, input_ids: torch.LongTensor, k: int = 1, box_probability: float = 0.5,
                generator: torch.Generator | None = None, scored: torch.BoolTensor | None = None,
                box_sides: tuple[float, float] = (0.0, 1.0)) -> dict:
    """The layout of `config.task` for `(B, 1 + N)` processor ids: k-ahead rows for raster models (k = 1 for the
    plain next-token loss and for conditional models), random orders for "inpaint".

    `scored` `(B, N)`: score only these tokens (labels elsewhere are -100); an inpainting model then reads every
    other pixel first. Without it, an inpainting order leaves a random rectangle (sides within `box_sides` of the
    image side) last with `box_probability`, and `hole` `(B, N)` says which rows predict a pixel of that rectangle
    (for a loss that weighs them differently).
    Random orders draw from `generator` (default: torch's global RNG, which training checkpoints restore).
    """
    if config.task != "inpaint":
        inputs = k_ahead_inputs(input_ids, k)
        if scored is not None:
            inputs["labels"] = inputs["labels"].masked_fill(~scored, -100)
        return inputs
    fill_order = config.inpaint_fill_order
    if scored is None:
        boxes = random_boxes(input_ids.shape[0], config.image_size, box_probability, generator, input_ids.device,
                             box_sides)
        order = random_orders(boxes, config.tokens_per_pixel, generator, fill_order)  # (B, N)
    else:
        order = last_tokens_order(scored, config.tokens_per_pixel, generator, fill_order)  # (B, N)
    inputs = any_order_inputs(input_ids, order)
    if scored is None:
        inputs["hole"] = boxes.repeat_interleave(config.tokens_per_pixel, dim=1).gather(1, order)  # (B, N)
    else:
        inputs["labels"] = inputs["labels"].masked_fill(~scored.gather(1, order), -100)
    return inputs


__all__ = ["aligned_condition_weights", "any_order_inputs", "k_ahead_inputs", "last_tokens_order", "random_boxes",
           "random_orders", "task_inputs"]
