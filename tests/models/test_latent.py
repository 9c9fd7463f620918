"""Latent diffusion: the VAE decoder (factors, chunking, cache), lazy decodes inside smcdiff.sample,
prompt embeddings, and a latent denoiser with CFG in one sampler run — on tiny random-weight diffusers
components built from config dicts (nothing is downloaded).

Expected values come from diffusers / transformers called directly (``vae.decode``,
``text_encoder(tokenizer(...))``), never from the code under test.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import smcdiff
from smcdiff.kernels import EDMEuler, Guided
from smcdiff.kernels.cfg import ClassifierFreeGuidance
from smcdiff.models.latent import Decoded, PromptEncoder, VAEDecoder, from_latent_diffusion, quantize
from smcdiff.weights import RewardPotential
from tests.models import tiny_pipeline as tp

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def vae():
    return tp.tiny_vae()


def _z(n=5, seed=0):
    return torch.randn(n, *tp.LATENT, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_decode_matches_the_vae_with_its_scaling_factor(vae, one_thread):
    dec = VAEDecoder(vae)
    assert dec.scaling_factor == pytest.approx(0.18215)  # AutoencoderKL's default config
    z = _z()
    with torch.no_grad():
        want = (vae.decode(z.float() / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    got = dec.decode(z)
    assert got.shape == (5, *tp.IMAGE) and got.dtype == torch.float32
    assert torch.equal(got, want)
    # A shift factor (SD3-style) is added after unscaling.
    shifted = VAEDecoder(vae, scaling_factor=1.5, shift_factor=0.25).decode(z)
    with torch.no_grad():
        want = (vae.decode(z.float() / 1.5 + 0.25).sample / 2 + 0.5).clamp(0, 1)
    assert torch.equal(shifted, want)


def test_max_batch_chunks_decodes_and_gives_the_same_images(vae, one_thread):
    sizes = []
    handle = vae.decoder.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        whole = VAEDecoder(vae).decode(_z(5))
        chunked = VAEDecoder(vae, max_batch=2).decode(_z(5))
    finally:
        handle.remove()
    assert sizes == [5, 2, 2, 1]
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_the_last_decode_is_cached_until_the_latents_change(vae, one_thread):
    dec = VAEDecoder(vae)
    z = _z(3)
    first = dec.decode(z)
    assert dec.decode(z) is first and dec.decodes == 3          # same tensor: no second decode
    z.add_(1.0)                                                 # modified in place: decoded again
    assert not torch.equal(dec.decode(z), first) and dec.decodes == 6
    assert dec.decode(z.clone()) is not None and dec.decodes == 9  # another tensor: decoded


def test_encode_inverts_decode_shapes_and_quantize(vae, one_thread):
    dec = VAEDecoder(vae)
    images = dec.decode(_z(2))
    z = dec.encode(images)
    assert z.shape == (2, *tp.LATENT) and z.dtype == torch.float64 and dec.encodes == 2
    with torch.no_grad():
        want = vae.encode(images * 2 - 1).latent_dist.mean.double() * 0.18215
    assert torch.allclose(z, want, atol=1e-6)
    q = quantize(torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1]))
    assert torch.equal(q * 255, torch.tensor([0.0, 128.0, 255.0, 255.0, 0.0]))


def test_bad_inputs_are_refused(vae):
    with pytest.raises(TypeError, match="decode"):
        VAEDecoder(object())
    with pytest.raises(ValueError, match="scaling_factor"):
        VAEDecoder(vae, scaling_factor=0.0)
    with pytest.raises(ValueError, match="max_batch"):
        VAEDecoder(vae, max_batch=0)
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        VAEDecoder(vae).decode(torch.zeros(4, 8, 8))
    with pytest.raises(TypeError, match="callable"):
        Decoded(3, None)


def test_pixel_models_see_their_samples_as_images():
    seen = []
    Decoded(lambda images: seen.append(images) or images.mean((1, 2, 3)), None)(torch.tensor([[[[-1.0]], [[0.0]], [[3.0]]]]))
    assert seen[0].flatten().tolist() == [0.0, 0.5, 1.0]  # x/2 + 1/2, clamped to [0, 1]


def test_decodes_happen_only_at_the_potential_steps(one_thread):
    """A reward on decoded x̂0 in a latent sampler run: the VAE decodes N latents exactly at the
    steps listed in ``potential_steps`` (lazy), and never in a run without a potential."""
    model = from_latent_diffusion(tp.tiny_unet(), tp.tiny_scheduler(), tp.tiny_vae(), max_batch=4)
    G, K, steps = 2, 3, 6
    sigmas = model.denoiser.sigmas(steps)
    emb = torch.randn(2, tp.TOKENS, tp.EMBED, generator=torch.Generator().manual_seed(5))
    cond = {"encoder_hidden_states": emb[0].expand(G, K, -1, -1), "uncond.encoder_hidden_states": emb[1].expand(G, K, -1, -1)}
    reward = RewardPotential(model.decoded(lambda images, **c: images.mean((1, 2, 3)).double()), "difference")
    kernel = Guided(EDMEuler(S_churn=5), ClassifierFreeGuidance(7.5))
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(G)]
    res = smcdiff.sample(model.denoiser, sigmas, kernel, reward, smcdiff.Resampler("systematic", 0.5), G, K, model.shape,
                         gens(), potential_steps={2, steps - 1}, resample_steps={2}, cond=cond)
    assert model.decoder.decodes == 2 * G * K
    assert res.nfe_total == 2 * steps * G * K      # CFG: 2 network evaluations per guided evaluation
    before = model.decoder.decodes
    smcdiff.sample(model.denoiser, sigmas, kernel, None, None, G, K, model.shape, gens(), cond=cond)
    assert model.decoder.decodes == before


@pytest.fixture(scope="module")
def text_parts(tmp_path_factory):
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tok")
    return tp.save_tokenizer(path), tp.tiny_text_encoder()


def test_prompt_encoder_gives_the_text_encoders_last_hidden_state(text_parts):
    tok, te = text_parts
    enc = PromptEncoder(tok, te, max_batch=2)
    got = enc(["a cat", "two dogs on a bench", ""])
    ids = tok(["a cat", "two dogs on a bench", ""], padding="max_length", max_length=tp.TOKENS, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        want = te(ids)[0]
    assert got.shape == (3, tp.TOKENS, tp.EMBED)
    assert torch.allclose(got, want, atol=1e-6)
    assert enc("a cat").shape == (1, tp.TOKENS, tp.EMBED)
    with pytest.raises(ValueError, match="prompts"):
        enc([])
