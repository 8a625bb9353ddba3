"""Checks of HF ``config.json`` files shared by the HF-format converters (Janus-Pro, Chameleon /
Lumina-mGPT / Anole, Emu3): a field a converter does not know is refused, not guessed."""

from __future__ import annotations

# Fields every HF config may carry (transformers v4 and v5, remote-code configs) that do not change
# the forward pass.
HF_GENERIC_FIELDS = frozenset({
    "_name_or_path", "architectures", "auto_map", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label",
    "label2id", "is_encoder_decoder", "output_attentions", "output_hidden_states", "problem_type",
    "return_dict", "transformers_version", "use_cache", "initializer_range", "_attn_implementation_autoset",
    "add_cross_attention", "bad_words_ids", "begin_suppress_tokens", "cross_attention_hidden_size",
    "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "finetuning_task",
    "forced_bos_token_id", "forced_eos_token_id", "is_decoder", "length_penalty", "max_length",
    "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams", "num_return_sequences",
    "output_scores", "prefix", "pruned_heads", "remove_invalid_values", "repetition_penalty",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params", "temperature",
    "tf_legacy_loss", "tie_encoder_decoder", "tokenizer_class", "top_k", "top_p", "torchscript",
    "typical_p", "use_bfloat16",
})


def refuse_unknown_fields(section: dict, known, where: str) -> None:
    """One-line ValueError listing the fields of ``section`` outside ``known`` and the generic ones."""
    unknown = sorted(set(section) - set(known) - HF_GENERIC_FIELDS)
    if unknown:
        raise ValueError(f"{where} has field(s) this converter does not understand: {unknown}; refusing "
                         "to guess their effect")
