"""Textual-inversion embeddings (``embedding:name`` in a prompt): every file layout, SDXL's two parts, weights and
punctuation, clear errors for a missing or misfit embedding, and the file's identity in the cache key."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import make_engine, models_root, tiny_file

from graph.paths import ModelPaths
from nodes.library.conditioning import CLIPTextEncode
from nodes.memory.manager import ModelManager
from nodes.text.embeddings import EmbeddingError, EmbeddingLookup
from nodes.text.tokens import tokenizer


def _token_vectors(encoder_module, words: str) -> torch.Tensor:
    """The token embeddings of ``words``: an embedding made of them must encode exactly like the words."""
    ids = [i for w in tokenizer()(words.split(), add_special_tokens=False)["input_ids"] for i in w]
    tm = getattr(encoder_module, "text_model", encoder_module)
    return tm.embeddings.token_embedding.weight[ids].detach().clone().float()


@pytest.fixture(scope="module")
def sd1():
    return ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))


def test_every_layout_encodes_exactly_like_the_words_it_stands_for(tmp_path, sd1):
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    vec = _token_vectors(sd1.clip.encoders[0].module.module, "red circle")
    torch.save({"string_to_param": {"*": vec}, "name": "rc", "step": 100}, folder / "a1111.pt")
    save_file({"emb_params": vec}, str(folder / "emb_params.safetensors"))
    torch.save({"<rc>": vec}, folder / "learned_embeds.bin")
    (folder / "sub").mkdir()
    save_file({"<rc>": vec}, str(folder / "sub" / "diffusers.safetensors"))
    lookup = EmbeddingLookup(ModelPaths(root=tmp_path))
    encode = lambda text: sd1.clip.encode(text, embeddings=lookup)[0]  # noqa: E731
    want = encode("a red circle on white")
    for name in ("a1111", "emb_params", "learned_embeds", "sub/diffusers", "a1111.pt"):
        assert torch.equal(encode(f"a embedding:{name} on white"), want), name
    # weights apply to an embedding like to words; trailing punctuation stays text
    assert torch.equal(encode("a (embedding:a1111:1.3), on white"), encode("a (red circle:1.3), on white"))
    assert not torch.equal(encode("a (embedding:a1111:1.3), on white"), want)
    # without a lookup (no folders known) the word is plain text
    assert not torch.equal(sd1.clip.encode("a embedding:a1111 on white")[0], want)


def test_sdxl_embeddings_give_each_text_encoder_its_part(tmp_path):
    bundle = ModelManager("cpu").load_checkpoint(tiny_file("sdxl", "fp32"))
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    l_mod, g_mod = (e.module.module for e in bundle.clip.encoders)
    save_file({"clip_l": _token_vectors(l_mod, "blue square"), "clip_g": _token_vectors(g_mod, "blue square")},
              str(folder / "xl.safetensors"))
    save_file({"emb_params": _token_vectors(l_mod, "blue square")}, str(folder / "sd1style.safetensors"))
    lookup = EmbeddingLookup(ModelPaths(root=tmp_path))
    cond, pooled = bundle.clip.encode("a embedding:xl", embeddings=lookup)
    cond2, pooled2 = bundle.clip.encode("a blue square", embeddings=lookup)
    assert torch.equal(cond, cond2) and torch.equal(pooled, pooled2)
    with pytest.raises(EmbeddingError, match="32-wide vectors, but this model's clip_g text encoder takes 48"):
        bundle.clip.encode("a embedding:sd1style", embeddings=lookup)


def test_missing_or_misfit_embedding_is_a_clear_error(tmp_path, sd1):
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    save_file({"emb_params": torch.randn(3, 768)}, str(folder / "sd15_style.safetensors"))
    save_file({"a": torch.randn(3, 32), "b": torch.randn(3, 32)}, str(folder / "two.safetensors"))
    lookup = EmbeddingLookup(ModelPaths(root=tmp_path))
    with pytest.raises(EmbeddingError, match=r"embedding 'nope' not found; looked in .*embeddings; available: "
                                             r"sd15_style.safetensors, two.safetensors"):
        sd1.clip.encode("a embedding:nope", embeddings=lookup)
    with pytest.raises(EmbeddingError, match="768-wide vectors, but this model's clip_l text encoder takes 32"):
        sd1.clip.encode("embedding:sd15_style", embeddings=lookup)
    with pytest.raises(EmbeddingError, match="not a textual-inversion embedding"):
        sd1.clip.encode("embedding:two", embeddings=lookup)


def _prompt_workflow(text: str) -> dict:
    return {"nodes": {
        "4": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "6": {"type": "CLIPTextEncode", "inputs": {"text": text, "clip": {"node": "4", "output": "CLIP"}}},
    }, "outputs": ["6"]}


def test_the_embedding_file_reaches_the_cache_key(tmp_path, sd1):
    root = models_root(tmp_path, ("m.safetensors", tiny_file("sd1", "fp32")))
    folder = root / "models" / "embeddings"
    folder.mkdir(parents=True)
    path = folder / "style.safetensors"
    vec = _token_vectors(sd1.clip.encoders[0].module.module, "red circle")
    save_file({"emb_params": vec}, str(path))
    eng, services = make_engine(root)
    wf = _prompt_workflow("a embedding:style on white")
    first = eng.run(wf)
    assert first.status == "success" and "6" in first.executed
    eng.run(wf)  # (the engine asks for fingerprints without a context: the folder is known once a prompt ran)
    assert "6" in eng.run(wf).cached
    # the same name, new content: the prompt text is unchanged, the result is not
    save_file({"emb_params": vec.flip(0)}, str(path))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    changed = eng.run(wf)
    assert "6" in changed.executed
    assert not torch.equal(changed.values["6"][0][0][0], first.values["6"][0][0][0])
    assert "6" in eng.run(wf).cached
    # with a context the hook resolves in that context's folders at once
    ctx = SimpleNamespace(services=services)
    fp = CLIPTextEncode.fingerprint(ctx, text="x embedding:style, (embedding:missing:1.2)")
    assert fp[0][0] == "style" and fp[0][1][0][0] == str(path.resolve()) and fp[1] == ["missing", []]
    assert CLIPTextEncode.fingerprint(ctx, text="no embeddings here") is None
    json.dumps(fp)  # JSON-able, as the cache key needs
