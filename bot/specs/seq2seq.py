"""Encoder-decoder models (T5, BART, mBART, Marian, M2M100, Blenderbot, PLBart, BigBird-Pegasus).

`seq2seq-lm` exports `encoder_model` (input_ids, attention_mask -> last_hidden_state) and `decoder_model`
(input_ids, encoder_attention_mask, encoder_hidden_states -> logits). `seq2seq-lm-with-past` adds present outputs to
`decoder_model` (`present.{i}.decoder.key/value` and `present.{i}.encoder.key/value`) and a
`decoder_with_past_model` that takes them back as `past_key_values.{i}.decoder.key/value` and
`past_key_values.{i}.encoder.key/value` with one new token and returns the new decoder presents: the layout of
optimum's ORTModelForSeq2SeqLM and transformers.js. `default` / `default-with-past` do the same with hidden states
for `AutoModel`. Classification and question-answering heads are one graph over input_ids and attention_mask.
"""

from __future__ import annotations

import torch

from bot.features import FEATURES
from bot.layout import BATCH, DECODER_SEQUENCE, ENCODER_SEQUENCE, PAST_SEQUENCE, SEQUENCE
from bot.specs import Graph, InputSpec, Shape, traceable_experts
from bot.specs.decoder import flat_cache
from bot.specs.encoder import TextEncoderSpec

_DECODER_FEATURES = {"default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"}


class Seq2SeqSpec(TextEncoderSpec):
    family = "seq2seq"

    def inputs(self, model, feature):
        dims = (BATCH, SEQUENCE)
        inputs = [InputSpec("input_ids", dims, "ids"), InputSpec("attention_mask", dims, "mask")]
        if feature == "default":
            inputs += [InputSpec("decoder_input_ids", (BATCH, DECODER_SEQUENCE), "ids"),
                       InputSpec("decoder_attention_mask", (BATCH, DECODER_SEQUENCE), "mask")]
        return inputs

    def call_kwargs(self, feature):
        return {"use_cache": False}

    def example_inputs(self, config, inputs, shape, seed=0):
        sizes = dict(shape.sizes)
        sizes.setdefault(DECODER_SEQUENCE, max(1, sizes[SEQUENCE] - 3))
        values = super().example_inputs(config, inputs, Shape(sizes, shape.padded), seed)
        eos = getattr(config, "eos_token_id", None)
        if eos is not None and "input_ids" in values:
            # Classification heads pool at the end-of-sequence token: one per row, at the last real position.
            mask, ids = values["attention_mask"], values["input_ids"]
            ids[ids == eos] = min(5, config.vocab_size - 1)
            ids[torch.arange(ids.shape[0]), mask.sum(dim=1) - 1] = eos
        return values

    def text_inputs(self, tokenizer, inputs, feature, config):
        return None if feature == "default" else super().text_inputs(tokenizer, inputs, feature, config)

    def graphs(self, model, feature, tokenizer=None):
        if feature not in _DECODER_FEATURES:
            return super().graphs(model, feature, tokenizer)
        traceable_experts(model)
        return split_graphs(model, self.output_names, with_past=FEATURES[feature].with_past)


class Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids, attention_mask):
        return (self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state,)


class Decoder(torch.nn.Module):
    """The model's own forward with precomputed encoder outputs, so LM heads, scaling and biases all apply."""

    def __init__(self, model, head_outputs: list[str], use_cache: bool, takes_past: bool):
        super().__init__()
        self.model = model
        self.head_outputs = head_outputs
        self.use_cache = use_cache
        self.takes_past = takes_past

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states, *past):
        from transformers import DynamicCache, EncoderDecoderCache
        from transformers.modeling_outputs import BaseModelOutput

        cache = None
        if self.use_cache:
            config = self.model.config
            self_attention, cross_attention = DynamicCache(config=config), DynamicCache(config=config)
            for layer in range(len(past) // 4):
                k, v, ek, ev = past[4 * layer: 4 * layer + 4]
                self_attention.update(k, v, layer)
                cross_attention.update(ek, ev, layer)
            cache = EncoderDecoderCache(self_attention, cross_attention)
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
                         attention_mask=encoder_attention_mask, decoder_input_ids=input_ids,
                         past_key_values=cache, use_cache=self.use_cache, return_dict=True)
        results = [out[name] for name in self.head_outputs]
        if self.use_cache:
            decoder_cache, encoder_cache = flat_cache(out.past_key_values.self_attention_cache), \
                flat_cache(out.past_key_values.cross_attention_cache)
            for layer in range(len(decoder_cache) // 2):
                results += decoder_cache[2 * layer: 2 * layer + 2]
                if not self.takes_past:  # the first step also returns the cross-attention cache
                    results += encoder_cache[2 * layer: 2 * layer + 2]
        return tuple(results)


def split_graphs(model, output_names, with_past: bool) -> list[Graph]:
    """encoder_model, decoder_model and (with past) decoder_with_past_model, with realistic example inputs."""
    config = model.config
    low, vocab = min(5, config.vocab_size - 1), config.vocab_size
    start = getattr(config, "decoder_start_token_id", None)
    start = start if start is not None else (config.pad_token_id or 0)
    encoder = Encoder(model).eval()

    def encoder_inputs(batch, sequence, padded, generator):
        ids = torch.randint(low, vocab, (batch, sequence), generator=generator)
        mask = torch.ones(batch, sequence, dtype=torch.long)
        if padded and batch > 1:
            mask[1, sequence // 2 + 1:] = 0
        return {"input_ids": ids, "attention_mask": mask}

    def decoder_inputs(batch, sequence, decoder_length, past, padded, seed):
        generator = torch.Generator().manual_seed(seed)
        enc = encoder_inputs(batch, sequence, padded, generator)
        with torch.no_grad():
            hidden = encoder(**enc)[0]
        ids = torch.randint(low, vocab, (batch, past + decoder_length), generator=generator)
        ids[:, 0] = start
        inputs = {"input_ids": ids[:, past:], "encoder_attention_mask": enc["attention_mask"],
                  "encoder_hidden_states": hidden}
        if past:
            with torch.no_grad():
                first = Decoder(model, [], use_cache=True, takes_past=False).eval()
                presents = first(ids[:, :past], enc["attention_mask"], hidden)
            inputs.update(zip(past_names, presents))
        return inputs

    with torch.no_grad():
        probe_out = model(input_ids=torch.full((1, 2), low), decoder_input_ids=torch.full((1, 1), start),
                          use_cache=True, return_dict=True)
    head = [n for n in output_names(probe_out) if n != "encoder_last_hidden_state"]
    layers = len(flat_cache(probe_out.past_key_values.self_attention_cache)) // 2
    past_names = [f"past_key_values.{i}.{part}.{kv}" for i in range(layers) for part in ("decoder", "encoder")
                  for kv in ("key", "value")]
    present_names = [n.replace("past_key_values.", "present.") for n in past_names]
    heads_dim = flat_cache(probe_out.past_key_values.self_attention_cache)[0].shape

    enc_inputs = [InputSpec("input_ids", (BATCH, SEQUENCE), "ids"),
                  InputSpec("attention_mask", (BATCH, SEQUENCE), "mask")]
    dec_inputs = [InputSpec("input_ids", (BATCH, DECODER_SEQUENCE), "ids"),
                  InputSpec("encoder_attention_mask", (BATCH, ENCODER_SEQUENCE), "mask"),
                  InputSpec("encoder_hidden_states", (BATCH, ENCODER_SEQUENCE, config.d_model), "hidden")]

    def enc_case(batch, sequence, padded, seed):
        return encoder_inputs(batch, sequence, padded, torch.Generator().manual_seed(seed))

    graphs = [Graph("encoder_model", encoder, enc_inputs, ["last_hidden_state"], enc_case(2, 8, True, 0),
                    [(Shape({BATCH: 3, SEQUENCE: 13}, True).describe(), enc_case(3, 13, True, 1)),
                     (Shape({BATCH: 1, SEQUENCE: 5}).describe(), enc_case(1, 5, False, 2))])]
    decoder_outputs = head + ([n for n in present_names] if with_past else [])
    graphs.append(Graph(
        "decoder_model", Decoder(model, head, use_cache=with_past, takes_past=False).eval(), dec_inputs,
        decoder_outputs, decoder_inputs(2, 8, 3, 0, True, 0),
        [(Shape({BATCH: 3, ENCODER_SEQUENCE: 13, DECODER_SEQUENCE: 5}, True).describe(), decoder_inputs(3, 13, 5, 0, True, 1)),
         (Shape({BATCH: 1, ENCODER_SEQUENCE: 5, DECODER_SEQUENCE: 1}).describe(), decoder_inputs(1, 5, 1, 0, False, 2))]))
    if with_past:
        past_inputs = [InputSpec(name, (BATCH, heads_dim[1],
                                        PAST_SEQUENCE if ".decoder." in name else ENCODER_SEQUENCE, heads_dim[3]),
                                 "past") for name in past_names]
        with_past_outputs = head + [n for n in present_names if ".decoder." in n]
        graphs.append(Graph(
            "decoder_with_past_model", Decoder(model, head, use_cache=True, takes_past=True).eval(),
            dec_inputs + past_inputs, with_past_outputs, decoder_inputs(2, 8, 1, 3, True, 0),
            [(Shape({BATCH: 3, ENCODER_SEQUENCE: 13, PAST_SEQUENCE: 4}, True).describe() + " (next token)",
              decoder_inputs(3, 13, 1, 4, True, 1)),
             (Shape({BATCH: 1, ENCODER_SEQUENCE: 5, PAST_SEQUENCE: 2}).describe() + " (next token)",
              decoder_inputs(1, 5, 1, 2, False, 2))]))
    return graphs
