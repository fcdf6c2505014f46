"""Hugging Face transformers on polarized models: tied and untied models built from configs (nothing is
downloaded), save_pretrained and its reload, tie_weights / init_weights / resize_token_embeddings, copies,
and Trainer's checkpoints resumed exactly."""

import copy

import pytest
import torch

import polaropt as po

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")
st = pytest.importorskip("safetensors.torch")
transformers.logging.set_verbosity_error()

VOCAB = 64


def gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def llama(tied):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, pad_token_id=None))


def bert():
    return transformers.BertForMaskedLM(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, vocab_size=VOCAB,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


# BERT's padding row is zero: with a row scale it polarizes to s = 0 there (it was refused)
MODELS = {"gpt2": (gpt2, "out"), "llama-tied": (lambda: llama(True), "row"),
          "llama-untied": (lambda: llama(False), "row"), "bert": (bert, "row"), "bert-tensor": (bert, "tensor")}
TIED = {"gpt2": ("lm_head", "transformer.wte"), "llama-tied": ("lm_head", "model.embed_tokens"),
        "bert": ("cls.predictions.decoder", "bert.embeddings.word_embeddings"),
        "bert-tensor": ("cls.predictions.decoder", "bert.embeddings.word_embeddings")}


def build(name, mode="absorb", seed=0):
    make, scale = MODELS[name]
    torch.manual_seed(seed)
    model = make().eval()
    po.polarize_model(model, scale=scale, mode=mode)
    return model


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def _x():
    return torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def plist(model, path):
    return model.get_submodule(path).parametrizations.weight


def plain_and_polar(name):
    """The plain model and a polarized copy of it."""
    make, scale = MODELS[name]
    torch.manual_seed(0)
    plain = make().eval()
    model = copy.deepcopy(plain)
    po.polarize_model(model, scale=scale, mode="absorb")
    return plain, model


@pytest.mark.parametrize("name", list(MODELS))
def test_polarizing_keeps_the_logits_and_tie_weights_keeps_the_tie(name):
    plain, model = plain_and_polar(name)
    x = _x()
    assert torch.allclose(logits(model, x), logits(plain, x), atol=1e-5)
    before = logits(model, x)
    model.tie_weights()  # post_init, from_pretrained and resizing call it; it raised on polar tied models
    assert torch.equal(logits(model, x), before)
    if name in TIED:
        head, emb = TIED[name]
        assert plist(model, head) is plist(model, emb)
        n = sum(p.numel() for p in model.parameters())
        assert n == sum(p.numel() for p in plain.parameters()) + sum(
            t.scale.numel() for t in po.polar_tensors(model))  # one s and V for the tie, nothing duplicated


@pytest.mark.parametrize("name", list(MODELS))
def test_save_pretrained_and_the_two_routes_back(name, tmp_path):
    model, x = build(name), _x()
    out = logits(model, x)
    model.save_pretrained(tmp_path / "polar")  # crashed: shared tensors (tied), dict extra state (untied)
    saved = st.load_file(tmp_path / "polar" / "model.safetensors")
    # route 1, the polarized model exactly: build it from the config, polarize it the same way, load the file
    again = build(name, seed=1)
    missing, unexpected = again.load_state_dict(saved, strict=False)
    assert not unexpected and set(missing) <= set(again.all_tied_weights_keys)
    polar_missing = [k for k in missing if ".parametrizations." in k]  # (BERT also ties a plain bias)
    assert len(polar_missing) == (2 if name in TIED else 0)  # a tie's s and V are saved once, under the source
    assert torch.equal(logits(again, x), out)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    # route 2, the plain model: unpolarize a copy and save that; from_pretrained needs no polaropt
    plain = copy.deepcopy(model)
    po.unpolarize_model(plain)
    plain.save_pretrained(tmp_path / "plain")
    loaded = type(model).from_pretrained(tmp_path / "plain").eval()
    assert torch.allclose(logits(loaded, x), out, atol=1e-5)
    assert po.is_polarized(model.get_submodule(TIED.get(name, ("lm_head",))[0]))  # the original stays polar


@pytest.mark.parametrize("name", ["gpt2", "llama-untied"])
def test_resize_token_embeddings_is_refused_with_the_route_and_the_route_works(name):
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"resize_token_embeddings on a polarized .* is refused.*Resize before "
                                         r"polarizing.*po\.unpolarize_model\(model\), resize, po\.polarize_model"):
        model.resize_token_embeddings(VOCAB + 8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config.vocab_size == VOCAB
    model.resize_token_embeddings()  # nothing to change (scripts call it with len(tokenizer)): as HF's own
    model.resize_token_embeddings(VOCAB)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    po.unpolarize_model(model)
    model.resize_token_embeddings(VOCAB + 8)
    po.polarize_model(model, scale="out", mode="absorb")
    assert model.config.vocab_size == VOCAB + 8
    assert logits(model, _x()).shape[-1] == VOCAB + 8
    for path in ("lm_head", model.base_model_prefix):
        assert any(q.startswith(path) for t in po.polar_tensors(model) for q in t.paths)
    assert model.get_output_embeddings().parametrizations.weight.original1.shape[0] == VOCAB + 8


@pytest.mark.parametrize("name", list(MODELS))
def test_init_weights_initializes_the_polar_weights_as_the_plain_model_does(name):
    plain, model = plain_and_polar(name)
    s = [t.scale for t in po.polar_tensors(model)]
    torch.manual_seed(7)
    plain.init_weights()
    torch.manual_seed(7)
    model.init_weights()  # wrote into recomputed weights (or raised, tied) before
    x = _x()
    assert torch.allclose(logits(model, x), logits(plain, x), atol=1e-5)
    assert [t.scale for t in po.polar_tensors(model)] == s  # the same leaves: an optimizer on them stays valid
    if name in TIED:
        assert plist(model, TIED[name][0]) is plist(model, TIED[name][1])


def test_unpolarize_model_gives_the_model_its_own_maps_back():
    model = build("gpt2")
    assert set(model.all_tied_weights_keys) == {"lm_head.parametrizations.weight.original0",
                                                "lm_head.parametrizations.weight.original1"}
    po.unpolarize_model(model)
    assert model.all_tied_weights_keys == {"lm_head.weight": "transformer.wte.weight"}
    assert "_tied_weights_keys" not in model.__dict__ and "resize_token_embeddings" not in model.__dict__
    assert "init_weights" not in model.__dict__
    model.tie_weights()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_a_copy_of_a_polar_hf_model_is_independent():
    from torch.optim.swa_utils import AveragedModel

    model, x = build("gpt2"), _x()
    out = logits(model, x)
    ema = AveragedModel(model)
    po.unpolarize_model(ema.module)
    ema.module.tie_weights()
    assert torch.equal(logits(model, x), out) and po.is_polarized(model.lm_head)
    model.tie_weights()
    assert plist(model, "lm_head") is plist(model, "transformer.wte")


def _trainer_run(out_dir, mode, steps, resume=None):
    model = build("gpt2", mode=mode)
    model.train()
    opt = torch.optim.AdamW(po.param_groups(model, weight_decay=0.1), lr=3e-3)
    if mode in ("project", "absorb"):
        po.attach(opt, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.05 * t))
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, VOCAB, (80, 12), generator=g)]
    args = transformers.TrainingArguments(output_dir=str(out_dir), max_steps=steps, save_steps=10,
                                          per_device_train_batch_size=4, report_to=[], seed=0, use_cpu=True,
                                          logging_steps=1000, disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched)).train(
        resume_from_checkpoint=resume)
    return model


@pytest.mark.parametrize("mode", po.MODES)
def test_trainer_checkpoints_resume_exactly(mode, tmp_path):
    """Trainer(save_steps=10) died at step 10 on a tied polar model; 10 + resume + 10 must equal 20 straight."""
    straight = _trainer_run(tmp_path / "a", mode, 20)
    _trainer_run(tmp_path / "b", mode, 10)
    assert (tmp_path / "b" / "checkpoint-10" / "model.safetensors").exists()
    resumed = _trainer_run(tmp_path / "b", mode, 20, resume=str(tmp_path / "b" / "checkpoint-10"))
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_generate_forms_each_polar_weight_once_per_call_and_writes_the_plain_tokens():
    """generate() recomputed every weight at every token (x1.19-1.39 of the plain model); polarize_model runs it
    under parametrize.cached()."""
    from polaropt.polar import Polar

    make, scale = MODELS["gpt2"]
    torch.manual_seed(0)
    plain = make().eval()
    model = copy.deepcopy(plain)
    po.polarize_model(model, scale=scale, mode="absorb")
    x = _x()
    kw = dict(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, min_new_tokens=6, do_sample=False,
              pad_token_id=0)
    calls = []
    forward = Polar.forward
    try:
        Polar.forward = lambda self, s, v: calls.append(self) or forward(self, s, v)
        out = model.generate(**kw)
        cached = len(calls)
        calls.clear()
        type(model).generate(model, **kw)  # what generate did before
        uncached = len(calls)
    finally:
        Polar.forward = forward
    n = len(list(po.polar_tensors(model)))
    assert cached <= n + 1 < uncached  # (the tied head and its embedding are one weight)
    assert torch.equal(out, plain.generate(**kw))
    po.unpolarize_model(model)
    assert "generate" not in model.__dict__
