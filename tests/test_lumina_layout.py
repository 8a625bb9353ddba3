"""Lumina-mGPT image layout and Chameleon's code <-> BPE mapping (vs HF's own mapping)."""

import numpy as np
import pytest

from sjd_jax.core.config import GPTConfig
from sjd_jax.families import lumina


@pytest.mark.parametrize("px,codes,with_newlines,span", [(512, 1024, 1056, 1060), (768, 2304, 2352, 2356),
                                                          (1024, 4096, 4160, 4164)])
def test_layout_counts_and_positions(px, codes, with_newlines, span):
    grid = lumina.grid_of(px)
    config = GPTConfig(vocab_size=65536, grid_size=grid, dim=32, n_layer=1, n_head=2, text_vocab_size=65536,
                       shared_embeddings=True, cls_token_num=4, rope_type="1d", rope_interleaved=False,
                       row_end_token=lumina.NEWLINE, image_token_range=(4, 8196))
    assert config.num_image_tokens == with_newlines
    forced = config.forced_tokens()
    w = px // 16
    newline_pos = np.flatnonzero(forced == lumina.NEWLINE)
    np.testing.assert_array_equal(newline_pos, np.arange(w, with_newlines, w + 1))  # every (w + 1)-th
    assert (forced[forced != lumina.NEWLINE] == -1).sum() == codes
    rows = np.where(forced >= 0, forced, 100)[None]
    full = lumina.full_image_tokens(rows, px)
    assert full.shape == (1, span)
    assert full[0, :3].tolist() == [8197, 8804 + px // 32, 8804 + px // 32] and full[0, -1] == 8196
    assert lumina.strip_row_ends(rows, grid).shape == (1, codes) and (lumina.strip_row_ends(rows, grid) == 100).all()
    allowed = config.allowed_tokens()
    assert allowed[4] and allowed[8195] and not allowed[8196] and not allowed[lumina.NEWLINE]


def test_sizes_must_be_multiples_of_32():
    assert lumina.image_prefix(512, 768) == [8197, 8804 + 16, 8804 + 24]
    assert lumina.grid_of(512, 768) == (32, 49)
    with pytest.raises(ValueError, match="multiples of 32"):
        lumina.grid_of(500)


def test_code_to_bpe_matches_hf_chameleon_mapping():
    from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

    rng = np.random.default_rng(0)
    n_img = 137  # codes with 1-3 digits
    ids = rng.permutation(np.arange(10, 10 + n_img + 5))  # shuffled: the mapping is not an offset
    vocab = {f"t{i}": i for i in range(10)}
    for c in range(n_img):
        vocab["IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(c)) + "Z"] = int(ids[c])
    vocab["<image>"] = int(ids[n_img])
    table = lumina.code_to_bpe(vocab)
    hf = ChameleonImageVocabularyMapping(vocab)
    assert table.tolist() == [hf.img2bpe[c] for c in range(n_img)]
    codes = rng.integers(0, n_img, (3, 7))
    np.testing.assert_array_equal(lumina.bpe_to_code(table[codes], table), codes)
    with pytest.raises(ValueError, match="not an image code"):
        lumina.bpe_to_code(np.array([3]), table)
    del vocab["IMGIMGBZ"]  # code 1 missing
    with pytest.raises(ValueError, match="not contiguous"):
        lumina.code_to_bpe(vocab)
