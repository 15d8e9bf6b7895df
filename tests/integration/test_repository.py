"""The repository and the core in-process, on real ONNX Runtime and PyTorch: loading, auto-complete,
batching correctness, version swaps under load, failed loads, deadlines, queue limits."""

import asyncio
import shutil

import numpy as np
import pytest

from parity.config import ServerConfig
from parity.errors import DeadlineExceeded, InvalidInput, ModelLoadError, NotFound, Unavailable
from parity.serving.core import InferenceCore
from parity.serving.models import Repository
from parity.testing.models import mlp_config, mlp_reference, write_config, write_exported_mlp, write_mlp_onnx, write_torchscript_mlp
from parity.types import InferRequest, Tensor

SIZES = [8, 16, 2]


def request(model, x, version=""):
    return InferRequest(model, version, inputs=[Tensor("INPUT0", "FP32", x.shape, x)])


def make_core(root):
    repo = Repository(root)
    core = InferenceCore(ServerConfig(model_repository=root), repo)
    core.started = True
    return core, repo


def run(coro):
    return asyncio.run(coro)


def test_batched_answers_match_the_model_run_directly(tmp_path):
    w = write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES, max_batch_size=16, max_queue_delay_microseconds=500))
    rng = np.random.default_rng(1)

    async def main():
        core, repo = make_core(tmp_path)
        assert await repo.load_all() == []
        xs = [rng.standard_normal((int(rng.integers(1, 9)), 8)).astype(np.float32) for _ in range(300)]
        results = await asyncio.gather(*(core.infer(request("m", x)) for x in xs))
        for x, r in zip(xs, results):
            np.testing.assert_allclose(r.outputs[0].data, mlp_reference(x, w), rtol=1e-5, atol=1e-5)
            assert r.outputs[0].shape == (x.shape[0], 2)
        st = core.model_statistics("m")[0]
        assert st["inference_count"] == sum(x.shape[0] for x in xs)
        assert st["execution_count"] < 300  # requests were batched
        assert st["inference_stats"]["success"]["count"] == 300
        await repo.close()

    run(main())


def test_config_is_completed_from_an_onnx_file(tmp_path):
    write_mlp_onnx(tmp_path / "auto" / "1" / "model.onnx", SIZES)

    async def main():
        core, repo = make_core(tmp_path)
        await repo.load_all()
        cfg = core.model_config("auto")
        assert cfg["max_batch_size"] == 64 and "dynamic_batching" in cfg
        assert cfg["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [8]}]
        meta = core.model_metadata("auto")
        assert meta["inputs"][0]["shape"] == [-1, 8]
        await repo.close()

    run(main())


@pytest.mark.parametrize("platform, filename, writer", [
    ("pytorch_libtorch", "model.pt", write_torchscript_mlp),
    ("pytorch_export", "model.pt2", write_exported_mlp),
])
def test_pytorch_runners_give_the_same_answers(tmp_path, platform, filename, writer):
    w = writer(tmp_path / "t" / "1" / filename, SIZES)
    cfg = mlp_config(SIZES)
    cfg["platform"] = platform
    write_config(tmp_path / "t", cfg)
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)

    async def main():
        core, repo = make_core(tmp_path)
        assert await repo.load_all() == []
        r = await core.infer(request("t", x))
        np.testing.assert_allclose(r.outputs[0].data, mlp_reference(x, w), rtol=1e-4, atol=1e-5)
        await repo.close()

    run(main())


def test_versions_swap_under_load_without_a_failed_request(tmp_path):
    root = tmp_path
    weights = {1: write_mlp_onnx(root / "m" / "1" / "model.onnx", SIZES, seed=1)}
    write_config(root / "m", mlp_config(SIZES))
    x = np.ones((2, 8), np.float32)

    async def main():
        core, repo = make_core(root)
        await repo.load_all()
        stop = False
        answers, failures = [], []

        async def client():
            while not stop:
                try:
                    r = await core.infer(request("m", x))
                    answers.append((r.model_version, r.outputs[0].data.copy()))
                except Exception as e:  # any failure is a test failure
                    failures.append(e)
                await asyncio.sleep(0)

        clients = [asyncio.create_task(client()) for _ in range(16)]
        for v in range(2, 7):
            weights[v] = write_mlp_onnx(root / "m" / str(v) / "model.onnx", SIZES, seed=v)
            await repo.poll()
            assert core.version("m").number == v
            await asyncio.sleep(0.05)
            shutil.rmtree(root / "m" / str(v - 1))  # the old version's files may go once it has drained
        stop = True
        await asyncio.gather(*clients)
        assert failures == []
        seen = {v for v, _ in answers}
        assert len(seen) >= 4
        for v, out in answers:  # every answer came from the version it names
            np.testing.assert_allclose(out, mlp_reference(x, weights[int(v)]), rtol=1e-5, atol=1e-5)
        await repo.settle()
        assert repo.load_events[("m", "1", "unload")] == 1
        await repo.close()

    run(main())


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(tmp_path):
    write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES))

    async def main():
        core, repo = make_core(tmp_path)
        await repo.load_all()
        (tmp_path / "m" / "2").mkdir()
        (tmp_path / "m" / "2" / "model.onnx").write_bytes(b"not an onnx file")
        with pytest.raises(ModelLoadError, match="version 2"):
            await repo.load_model("m")
        assert core.version("m").number == 1
        r = await core.infer(request("m", np.zeros((1, 8), np.float32)))
        assert r.model_version == "1"
        idx = {(e["version"]): e for e in repo.index()}
        assert idx["2"]["state"] == "UNAVAILABLE" and "not a loadable ONNX model" in idx["2"]["reason"]
        assert repo.load_events[("m", "2", "failure")] == 1
        await repo.close()

    run(main())


def test_bad_requests_are_refused_with_what_to_fix(tmp_path):
    write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES, max_batch_size=4))

    async def main():
        core, repo = make_core(tmp_path)
        await repo.load_all()
        ok = np.zeros((1, 8), np.float32)
        cases = [
            (InferRequest("nope", inputs=[]), NotFound, "unknown model 'nope'"),
            (request("m", ok, version="7"), NotFound, "no ready version 7"),
            (InferRequest("m", inputs=[]), InvalidInput, "needs input(s) ['INPUT0']"),
            (InferRequest("m", inputs=[Tensor("INPUT0", "FP32", (1, 8), ok), Tensor("EXTRA", "FP32", (1, 8), ok)]), InvalidInput, "no input 'EXTRA'"),
            (InferRequest("m", inputs=[Tensor("INPUT0", "FP64", (1, 8), ok.astype(np.float64))]), InvalidInput, "expects FP32"),
            (request("m", np.zeros((1, 9), np.float32)), InvalidInput, "expects [-1, 8]"),
            (request("m", np.zeros((5, 8), np.float32)), InvalidInput, "outside 1..4"),
        ]
        for req, kind, text in cases:
            with pytest.raises(kind) as e:
                await core.infer(req)
            assert text in e.value.message
        assert (await core.infer(request("m", ok))).outputs[0].shape == (1, 2)
        await repo.close()

    run(main())


def test_deadline_passing_in_the_queue_is_never_executed(tmp_path):
    write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    # a batch of 4 is preferred and waits up to 10 s for it: a lone request sits in the queue
    write_config(tmp_path / "m", mlp_config(SIZES, max_batch_size=4, preferred_batch_size=[4], max_queue_delay_microseconds=10_000_000))

    async def main():
        core, repo = make_core(tmp_path)
        await repo.load_all()
        loop = asyncio.get_running_loop()
        req = request("m", np.zeros((1, 8), np.float32))
        req.deadline = loop.time() + 0.05
        with pytest.raises(DeadlineExceeded, match="not executed"):
            await core.infer(req)
        st = core.model_statistics("m")[0]
        assert st["execution_count"] == 0 and st["inference_stats"]["fail"]["count"] == 1
        # a full batch goes at once
        rs = await asyncio.gather(*(core.infer(request("m", np.zeros((1, 8), np.float32))) for _ in range(4)))
        assert len(rs) == 4 and core.model_statistics("m")[0]["execution_count"] == 1
        await repo.close()

    run(main())


def test_sub_millisecond_queue_delays_and_deadlines_hold_on_the_servers_loop(tmp_path):
    """On uvloop (the server's loop, whose own timers round to whole milliseconds): a lone
    request waits its model's 400 us queue delay -- not less --, its queue time is reported as
    such, and a 300 us deadline in a queue that would wait 10 s fails the request, not before."""
    import time

    import uvloop

    write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES, max_batch_size=8, preferred_batch_size=[8], max_queue_delay_microseconds=400))
    write_mlp_onnx(tmp_path / "slow" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "slow", mlp_config(SIZES, max_batch_size=4, preferred_batch_size=[4], max_queue_delay_microseconds=10_000_000))

    async def main():
        core, repo = make_core(tmp_path)
        assert await repo.load_all() == []
        for i in range(20):
            before = core.model_statistics("m")[0]["inference_stats"]["queue"]["ns"]
            t = time.monotonic()
            await core.infer(request("m", np.zeros((1, 8), np.float32)))
            took = time.monotonic() - t
            queued = core.model_statistics("m")[0]["inference_stats"]["queue"]["ns"] - before
            assert took >= 0.0004 and queued >= 400_000, (i, took, queued)
        assert core.model_statistics("m")[0]["execution_count"] == 20
        for _ in range(5):
            req = request("slow", np.zeros((1, 8), np.float32))
            req.deadline = time.monotonic() + 0.0003
            with pytest.raises(DeadlineExceeded, match="not executed"):
                await core.infer(req)
            assert time.monotonic() >= req.deadline
        await repo.close()

    uvloop.run(main())


def test_cancelled_requests_leave_the_queue(tmp_path):
    write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES, max_batch_size=4, preferred_batch_size=[4], max_queue_delay_microseconds=10_000_000))

    async def main():
        core, repo = make_core(tmp_path)
        await repo.load_all()
        task = asyncio.create_task(core.infer(request("m", np.zeros((1, 8), np.float32))))
        await asyncio.sleep(0.01)
        assert core.version("m").stats.pending() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rs = await asyncio.gather(*(core.infer(request("m", np.ones((1, 8), np.float32))) for _ in range(4)))
        assert len(rs) == 4
        st = core.model_statistics("m")[0]
        assert st["inference_count"] == 4  # the cancelled one never ran
        await repo.close()

    run(main())


def test_a_full_queue_answers_unavailable_at_once(tmp_path):
    write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(
        tmp_path / "m",
        mlp_config(SIZES, max_batch_size=4, preferred_batch_size=[4], max_queue_delay_microseconds=10_000_000, max_queue_size=2),
    )

    async def main():
        core, repo = make_core(tmp_path)
        await repo.load_all()
        waiting = [asyncio.create_task(core.infer(request("m", np.zeros((1, 8), np.float32)))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="queue is full"):
            await core.infer(request("m", np.zeros((1, 8), np.float32)))
        for t in waiting:
            t.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        st = core.version("m").stats
        assert st.failures["rejected"] == 1
        await repo.close()

    run(main())


def test_without_dynamic_batching_each_request_runs_alone(tmp_path):
    w = write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES, batching=False))
    rng = np.random.default_rng(3)

    async def main():
        core, repo = make_core(tmp_path)
        await repo.load_all()
        xs = [rng.standard_normal((int(rng.integers(1, 5)), 8)).astype(np.float32) for _ in range(50)]
        results = await asyncio.gather(*(core.infer(request("m", x)) for x in xs))
        for x, r in zip(xs, results):
            np.testing.assert_allclose(r.outputs[0].data, mlp_reference(x, w), rtol=1e-5, atol=1e-5)
        st = core.model_statistics("m")[0]
        assert st["execution_count"] == 50 and st["inference_count"] == sum(len(x) for x in xs)
        await repo.close()

    run(main())


def test_a_broken_config_is_refused_naming_file_and_field_and_others_still_serve(tmp_path):
    write_mlp_onnx(tmp_path / "good" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "good", mlp_config(SIZES))
    write_mlp_onnx(tmp_path / "bad" / "1" / "model.onnx", SIZES)
    cfg = mlp_config(SIZES)
    cfg["dynamic_batching"] = {"max_queue_delay_us": 5}
    write_config(tmp_path / "bad", cfg)

    async def main():
        core, repo = make_core(tmp_path)
        failures = await repo.load_all()
        assert len(failures) == 1
        assert f"{tmp_path / 'bad' / 'config.yaml'}: dynamic_batching.max_queue_delay_us: unknown field" in failures[0]
        (entry,) = [e for e in repo.index() if e["name"] == "bad"]
        assert entry["state"] == "UNAVAILABLE" and "max_queue_delay_us" in entry["reason"]
        assert not core.ready  # strict readiness: every model in the repository must be ready
        r = await core.infer(request("good", np.zeros((1, 8), np.float32)))
        assert r.outputs[0].shape == (1, 2)
        with pytest.raises(Unavailable, match="max_queue_delay_us"):
            await core.infer(request("bad", np.zeros((1, 8), np.float32)))
        await repo.close()

    run(main())


def test_callback_submissions_are_answered_without_a_future_and_can_be_cancelled(tmp_path):
    w = write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES, max_batch_size=4, preferred_batch_size=[4], max_queue_delay_microseconds=10_000_000))

    async def main():
        core, repo = make_core(tmp_path)
        await repo.load_all()
        answered = []

        def done(ticket):
            plan, t0 = ticket.context
            try:
                answered.append(core.finish(InferRequest("m"), plan, t0, ticket.result()))
            except BaseException as e:
                answered.append(core.fail(plan, t0, e))

        x = np.random.default_rng(5).standard_normal((1, 8)).astype(np.float32)
        gone = core.submit(request("m", x), done)[0]
        gone.cancel()  # its client went away: answered at once, dropped from the queue
        assert answered[0].reason == "cancelled"
        tickets = [core.submit(request("m", x), done)[0] for _ in range(4)]
        for _ in range(100):
            if all(t.done() for t in tickets):
                break
            await asyncio.sleep(0.01)
        assert len(answered) == 5
        for r in answered[1:]:
            np.testing.assert_allclose(r.outputs[0].data, mlp_reference(x, w), rtol=1e-5, atol=1e-5)
        assert core.model_statistics("m")[0]["inference_count"] == 4
        await repo.close()

    run(main())
