"""Training and scoring layouts (layouts_pixelgpt.py): k-ahead rows, any-order rows, random orders and boxes."""


import pytest
import torch
import torch.nn.functional as F

from pixelgpt.modeling.layouts_pixelgpt import k_ahead_inputs, random_boxes, random_orders, task_inputs

from conftest import make_model, random_ids


def test_k_ahead_layout_with_k_1_is_the_raster_model():
    model = make_model()
    ids = random_ids(model.config)
    inputs = k_ahead_inputs(ids, 1)
    assert torch.equal(inputs["input_ids"], ids[:, :-1])
    out = model(**inputs)
    torch.testing.assert_close(out.loss, model(ids, labels=ids).loss)
    torch.testing.assert_close(out.logits, model(ids).logits[:, :-1])


def test_k_ahead_rows_never_see_their_target_or_later_tokens():
    model = make_model(parallel_tokens=3)
    ids = random_ids(model.config)
    logits = model(**k_ahead_inputs(ids, 3)).logits
    changed = ids.clone()
    changed[:, 1 + 10] = (changed[:, 1 + 10] + 1) % 13  # token 10 is held by row 13, which predicts token 13
    later = model(**k_ahead_inputs(changed, 3)).logits
    torch.testing.assert_close(logits[:, :13], later[:, :13], rtol=0, atol=0)
    assert not torch.allclose(logits[:, 13], later[:, 13])


def test_any_order_inputs_are_a_shifted_permutation_with_boxes_last():
    model = make_model(task="inpaint", vocab_size=11, image_size=4, tokens_per_pixel=3)
    ids = random_ids(model.config, batch=3)
    inputs = task_inputs(model.config, ids, box_probability=1.0, generator=torch.Generator().manual_seed(0))
    order = inputs["target_positions"]  # (B, N)
    n = model.config.num_image_tokens
    assert order.shape == (3, n) and all(sorted(row.tolist()) == list(range(n)) for row in order)
    assert torch.equal(inputs["labels"], ids[:, 1:].gather(1, order))
    assert torch.equal(inputs["input_ids"][:, 1:], inputs["labels"][:, :-1])
    assert torch.equal(inputs["input_ids"][:, 0], ids[:, 0]) and (inputs["input_positions"][:, 0] == -1).all()
    assert torch.equal(inputs["input_positions"][:, 1:], order[:, :-1])
    assert torch.equal(order % 3, torch.arange(3).repeat(n // 3).expand(3, -1))  # a pixel's R, G, B stay in order
    # The rectangle (drawn with the same generator) is a contiguous block at the end of every order.
    boxes = random_boxes(3, model.config.image_size, 1.0, torch.Generator().manual_seed(0))  # (B, pixels)
    for row, box, hole in zip(order, boxes, inputs["hole"]):
        pixels = row[::3] // 3
        in_box = box[pixels]
        assert in_box.any() and not in_box[: len(pixels) - int(in_box.sum())].any()
        assert torch.equal(hole, in_box.repeat_interleave(3))  # `hole` marks the rows that predict its tokens


@pytest.mark.parametrize("sides, low, high", [((0.0, 1.0), 1, 9), ((0.25, 0.75), 2, 7), ((0.5, 0.5), 4, 4)])
def test_random_boxes_are_rectangles_with_sides_in_the_given_range(sides, low, high):
    boxes = random_boxes(2000, 9, 1.0, torch.Generator().manual_seed(0), sides=sides).view(2000, 9, 9)
    rows, cols = boxes.any(2), boxes.any(1)  # (B, 9) each
    heights, widths = rows.sum(1), cols.sum(1)
    assert torch.equal(boxes.sum((1, 2)), heights * widths)  # a filled rectangle, nothing else
    for side in (heights, widths):  # 9 * 0.25 and 9 * 0.75 round to 2 and 7; every size in range is drawn
        assert set(side.tolist()) == set(range(low, high + 1))
    assert not random_boxes(50, 9, 0.0, torch.Generator().manual_seed(0), sides=sides).any()


def test_raster_fill_order_draws_the_last_pixels_row_by_row_after_the_rest_in_random_order():
    last = torch.rand(4, 36, generator=torch.Generator().manual_seed(0)) < 0.4  # (B, pixels), scattered
    order = random_orders(last, 3, torch.Generator().manual_seed(1), fill_order="raster")  # (B, 108)
    for row, marked in zip(order, last):
        pixels = row[::3] // 3
        count = int(marked.sum())
        assert torch.equal(pixels[len(pixels) - count :], marked.nonzero()[:, 0])  # marked ones last, ascending
        assert not marked[pixels[: len(pixels) - count]].any()
        assert torch.equal(order[0].sort().values, torch.arange(108))
    # the known pixels keep a random order (not raster), and the random fill order shuffles the marked ones
    unmarked = order[0, ::3][: int((~last[0]).sum())] // 3
    assert not torch.equal(unmarked, unmarked.sort().values)
    shuffled = random_orders(last, 1, torch.Generator().manual_seed(1))[0][-int(last[0].sum()) :]
    assert not torch.equal(shuffled, shuffled.sort().values)


def test_raster_both_puts_the_known_pixels_row_by_row_too():
    last = torch.rand(4, 36, generator=torch.Generator().manual_seed(0)) < 0.4  # (B, pixels), scattered
    order = random_orders(last, 3, torch.Generator().manual_seed(1), fill_order="raster_both")  # (B, 108)
    for row, marked in zip(order, last):
        expected = torch.cat([(~marked).nonzero()[:, 0], marked.nonzero()[:, 0]])  # known ascending, then marked
        assert torch.equal(row, (expected[:, None] * 3 + torch.arange(3)).flatten())


def test_any_order_loss_scores_every_token_once():
    model = make_model(task="inpaint")
    ids = random_ids(model.config)
    inputs = task_inputs(model.config, ids, generator=torch.Generator().manual_seed(1))
    inputs.pop("hole")
    out = model(**inputs)
    expected = F.cross_entropy(out.logits.flatten(0, 1), inputs["labels"].flatten())
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (2, model.config.num_image_tokens, model.config.vocab_size)


def test_any_order_queries_see_context_on_every_side():
    """The first redrawn pixel's prediction depends on a kept pixel that comes after it in raster order."""
    model = make_model(task="inpaint", vocab_size=256)
    known = random_ids(model.config)[:, 1:]
    below = known.clone()
    below[:, -1] = (below[:, -1] + 17) % 256  # change the bottom-right pixel only
    mask = torch.zeros(2, 25, dtype=torch.bool)
    mask[:, 0] = True  # redraw the top-left pixel
    order = random_orders(mask, model.config.tokens_per_pixel, torch.Generator().manual_seed(0))
    assert (order[:, -1] == 0).all()

    def last_logits(tokens):
        seq = tokens.gather(1, order)
        ids = torch.cat([torch.full((2, 1), model.config.start_token_id), seq[:, :-1]], 1)
        held = torch.cat([torch.full((2, 1), -1), order[:, :-1]], 1)
        return model(input_ids=ids, input_positions=held, target_positions=order).logits[:, -1]

    assert not torch.allclose(last_logits(known), last_logits(below))


@pytest.mark.parametrize("task", ["generate", "inpaint"])
def test_task_inputs_score_only_the_given_tokens_and_inpainting_reads_the_rest_first(task):
    model = make_model(task=task, vocab_size=11, image_size=4, tokens_per_pixel=3)
    ids = random_ids(model.config, batch=2)
    pixels = torch.zeros(2, 16, dtype=torch.bool)
    pixels[0, [5, 6, 9]] = True
    pixels[1, :4] = True
    scored = pixels.repeat_interleave(3, dim=1)  # (B, N): every sub-pixel of a scored pixel
    inputs = task_inputs(model.config, ids, scored=scored, generator=torch.Generator().manual_seed(0))
    labels = inputs["labels"]
    assert torch.equal((labels != -100).sum(1), scored.sum(1))
    predicted = inputs["target_positions"]
    assert torch.equal(labels[labels != -100], ids[:, 1:].gather(1, predicted)[labels != -100])
    if task == "inpaint":  # the scored tokens come last: every other pixel is read before them
        for row, count in zip(labels, scored.sum(1)):
            assert (row[-int(count):] != -100).all()
    else:  # raster rows: unchanged apart from the ignored labels
        plain = k_ahead_inputs(ids, 1)
        assert torch.equal(inputs["input_ids"], plain["input_ids"])
        assert torch.equal(labels, plain["labels"].masked_fill(~scored, -100))


def test_task_inputs_is_public_api_of_the_package():
    """Training loops of one's own lay batches out with it (the README documents it): `from pixelgpt import`."""
    import pixelgpt

    assert pixelgpt.task_inputs is task_inputs and "task_inputs" in pixelgpt.__all__
