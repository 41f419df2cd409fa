"""One model, many callers: sub-networks and gate widths travel with each call, so threads and asyncio tasks sharing
a model get exactly their serial results, and the model is unchanged afterwards."""

import asyncio
import threading

import pytest
import torch

from transformers_flex import FlexBertForSequenceClassification

ROUNDS = 40  # calls per thread: enough for the threads' calls to interleave inside forward passes


@pytest.fixture
def model(tiny_config):
    tiny_config.exit_layers, tiny_config.gate_block_size = [1, 2, 3], 1
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with torch.no_grad():  # gates that choose differently per input, so gated rows run at several widths
        for gate in model.width_gates.values():
            gate.classifier.weight.mul_(50)
    return model


@pytest.fixture
def batches():
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(4):
        input_ids = torch.randint(1, 99, (6, 12), generator=generator)
        lengths = torch.randint(3, 13, (6,), generator=generator)
        mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": input_ids * mask, "attention_mask": mask})
    return out


def run_in_threads(jobs: dict) -> dict:
    """Run each job (a function of the round number) `ROUNDS` times in its own thread, all started together."""
    results = {name: [] for name in jobs}
    errors = []
    start = threading.Barrier(len(jobs))

    def work(name):
        start.wait()
        try:
            for round_index in range(ROUNDS):
                results[name].append(jobs[name](round_index))
        except Exception as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


@torch.no_grad()
@pytest.mark.parametrize("style", ["with", "argument"])
def test_two_threads_at_different_subnets_get_their_serial_results(model, batches, style):
    subnets = {"half": (0.5, 1.0), "quarter_shallow": (0.25, 0.5)}

    def call(width, depth, batch):
        if style == "argument":
            return model(**batch, width=width, depth=depth).logits
        with model.subnet(width=width, depth=depth):
            return model(**batch).logits

    serial = {name: [call(*subnet, batch) for batch in batches] for name, subnet in subnets.items()}
    jobs = {name: (lambda i, s=subnet: call(*s, batches[i % len(batches)])) for name, subnet in subnets.items()}
    results = run_in_threads(jobs)
    for name, outputs in results.items():
        for round_index, logits in enumerate(outputs):
            assert torch.equal(logits, serial[name][round_index % len(batches)]), (name, round_index)
    assert model.active_subnet == {"width": 1.0, "depth": 1.0}


@torch.no_grad()
def test_two_threads_with_gates_get_their_serial_results(model, batches):
    """Gates pick per-row widths inside the call; two threads with different gate width maps share the model."""
    maps = {"narrow": [0.25, 0.5, 0.5, 0.75], "wide": [1.0, 0.75, 0.75, 0.5]}

    def call(gate_widths, batch):
        output = model.dynamic_forward(**batch, gate_widths=gate_widths, threshold=0.3)
        return output.logits, output.layer_widths

    serial = {name: [call(widths, batch) for batch in batches] for name, widths in maps.items()}
    assert len({tuple(row) for logits, widths in serial["narrow"] for row in widths.tolist()}) > 1  # gates vary
    jobs = {name: (lambda i, w=widths: call(w, batches[i % len(batches)])) for name, widths in maps.items()}
    results = run_in_threads(jobs)
    for name, outputs in results.items():
        for round_index, (logits, widths) in enumerate(outputs):
            expected_logits, expected_widths = serial[name][round_index % len(batches)]
            assert torch.equal(logits, expected_logits) and torch.equal(widths, expected_widths), (name, round_index)
    assert model.config.gate_widths == [1.0, 0.75, 0.5, 0.25]


@torch.no_grad()
def test_subnet_blocks_are_local_to_their_asyncio_task(model, batches):
    batch = batches[0]
    expected = {width: model(**batch, width=width).logits for width in (0.5, 0.25)}
    seen = {}

    async def request(width):
        with model.subnet(width=width):
            await asyncio.sleep(0)  # the other task runs its own block meanwhile
            seen[width] = (model.active_subnet["width"], model(**batch).logits)

    async def serve():
        await asyncio.gather(request(0.5), request(0.25))

    asyncio.run(serve())
    for width, (active, logits) in seen.items():
        assert active == width and torch.equal(logits, expected[width])
    assert model.active_subnet == {"width": 1.0, "depth": 1.0}


@torch.no_grad()
def test_a_calls_argument_beats_the_innermost_block_which_beats_the_default(model, batches):
    batch = batches[0]
    reference = {width: model(**batch, width=width).logits for width in (0.75, 0.5, 0.25)}
    model.set_subnet(width=0.75)
    assert torch.equal(model(**batch).logits, reference[0.75])
    with model.subnet(width=0.5):
        assert torch.equal(model(**batch).logits, reference[0.5])
        with model.subnet(width=0.25):
            assert torch.equal(model(**batch).logits, reference[0.25])
        assert torch.equal(model(**batch).logits, reference[0.5])  # the inner block restored the outer one
        assert torch.equal(model(**batch, width=0.75).logits, reference[0.75])
    assert model.active_subnet == {"width": 0.75, "depth": 1.0}
