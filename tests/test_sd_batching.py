"""The fused engine run (Engine.run_many) of prompts that differ in seed and prompt text, with the tiny SD1 checkpoint:
KSampler samples them as one batch and each latent equals its run alone up to float32 rounding (the tolerance of
``sd_fixtures.assert_close_to_scale``: a batched UNet call differs from a batch-1 call only in kernel rounding), for a
deterministic, an ancestral (per-step noise from each prompt's own seed) and an SDE sampler."""
from __future__ import annotations

import copy
import json

import pytest
from sd_fixtures import assert_close_to_scale, make_engine, models_root, tiny_file
from test_server_support import REPO

pytestmark = pytest.mark.timeout(300)


def prompts(sampler: str) -> list[dict]:
    base = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    base["nodes"]["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    base["nodes"]["3"]["inputs"].update(steps=3, sampler_name=sampler)
    base["outputs"] = ["3"]
    out = []
    for i, text in enumerate(["a red circle", "a blue square " + "and more words " * 20, "a red circle"]):
        wf = copy.deepcopy(base)
        wf["nodes"]["3"]["inputs"]["seed"] = 11 + i
        wf["nodes"]["6"]["inputs"]["text"] = text  # the second is longer than 77 tokens: two chunks
        out.append(wf)
    return out


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde"])
def test_fused_run_equals_runs_alone(tmp_path, sampler, monkeypatch, one_torch_thread):
    import nodes.library.sampling as library

    root = models_root(tmp_path, ("tiny.safetensors", tiny_file("sd1", "fp16")))
    wfs = prompts(sampler)
    alone_engine, _ = make_engine(root)
    alone = [alone_engine.run(wf) for wf in wfs]
    batches = []
    real = library.sample_batch

    def counting(ctxs, calls):
        out = real(ctxs, calls)
        batches.append((len(calls), out is not None))
        return out

    monkeypatch.setattr(library, "sample_batch", counting)
    engine, _ = make_engine(root)
    events: list[tuple[int, str, str | None]] = []
    fused = engine.run_many([dict(workflow=wf, on_event=lambda e, i=i: events.append((i, e.type, e.node_id)))
                             for i, wf in enumerate(wfs)])
    assert batches == [(3, True)]  # one sampling run for the three prompts
    for a, f in zip(alone, fused):
        assert a.status == f.status == "success", f.errors
        assert_close_to_scale(f.values["3"][0]["samples"], a.values["3"][0]["samples"])
    for i in range(3):  # each prompt its own events: started, a progress per step (and the shared loader's), finished
        assert [t for j, t, _ in events if j == i and t in ("started", "finished")] == ["started", "finished"]
        assert sum(1 for j, t, n in events if j == i and t == "progress" and n == "3") == 3
        assert sum(1 for j, t, n in events if j == i and t == "progress" and n == "4") == 8
    # the shared checkpoint loader and negative prompt ran once, reported by each prompt
    assert all("4" in r.executed for r in fused)


@pytest.mark.parametrize("case", ["other steps", "dpm_adaptive"])
def test_prompts_that_cannot_share_a_batch_are_sampled_on_their_own(tmp_path, monkeypatch, one_torch_thread, case):
    """Other steps; or dpm_adaptive, whose step sizes follow an error norm over the whole batch (batched rows would
    change each other's steps)."""
    import nodes.library.sampling as library

    root = models_root(tmp_path, ("tiny.safetensors", tiny_file("sd1", "fp16")))
    if case == "other steps":
        wfs = prompts("euler")[:2]
        wfs[1]["nodes"]["3"]["inputs"]["steps"] = 2
    else:
        wfs = prompts("dpm_adaptive")[:2]
    alone_engine, _ = make_engine(root)
    alone = [alone_engine.run(wf) for wf in wfs]
    calls = []
    real = library.sample_batch
    monkeypatch.setattr(library, "sample_batch", lambda ctxs, c: calls.append(len(c)) or real(ctxs, c))
    engine, _ = make_engine(root)
    fused = engine.run_many([dict(workflow=wf) for wf in wfs])
    assert calls == [2]  # offered, declined: each sampled alone, the same as alone
    for a, f in zip(alone, fused):
        assert f.status == "success"
        assert_close_to_scale(f.values["3"][0]["samples"], a.values["3"][0]["samples"])
