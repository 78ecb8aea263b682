"""A small tokenizer trained here, for the toy testbed (the embedded default).

The toy teacher and student of ``python -m cliffdistill.main`` need a vocabulary of a few
hundred tokens, not Qwen's 151936: this module trains one with HF ``tokenizers`` on text from
:mod:`cliffdistill.data.synthetic` (``toy_corpus.build_toy_tokenizer``) and wraps it as a ``transformers`` fast tokenizer, so the
rest of the code (prompt building, ``apply_chat_template``, ``save_pretrained`` /
``AutoTokenizer.from_pretrained``) treats it exactly like a real model's tokenizer.

Design:

* byte-level BPE (GPT-2 style), so ``decode(encode(text)) == text`` for any ASCII text and
  whitespace needs no special care; the initial alphabet is printable ASCII plus tab and
  newline, so any ASCII prompt encodes (unseen words fall back to characters);
* digits are split one per token (``Digits(individual_digits=True)`` before byte-level), so a
  number is written digit by digit, and ``" 12"`` is ``["Ġ", "1", "2"]``;
* special tokens ``<|pad|>``, ``<|end|>``, ``<|system|>``, ``<|user|>``, ``<|assistant|>``,
  ``<|unk|>`` (ids 0-5); ``<|end|>`` is EOS (it closes every chat turn), ``<|pad|>`` is PAD;
  there is no BOS; characters outside the alphabet (non-ASCII) encode as one ``<|unk|>`` per run;
* the chat format (one definition, :func:`render_chat`, mirrored by :data:`CHAT_TEMPLATE`)::

      <|system|>S<|end|><|user|>Q1<|end|><|assistant|>A1<|end|><|user|>Q<|end|><|assistant|>

  with no whitespace between turns; ``add_generation_prompt`` appends ``<|assistant|>``.
  Assistant turns are wrapped in ``{% generation %}`` so ``return_assistant_tokens_mask``
  works (the mask covers the answer and its closing ``<|end|>``).

Only the light part of this module (the chat format) is imported eagerly; ``tokenizers`` and
``transformers`` are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
UNK = "<|unk|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
#: Special tokens in id order: <|pad|> = 0, <|end|> = 1, ...
SPECIAL_TOKENS: tuple[str, ...] = (PAD, END, SYSTEM, USER, ASSISTANT, UNK)
ROLES: dict[str, str] = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

DEFAULT_VOCAB_SIZE = 256
MODEL_MAX_LENGTH = 4096

#: Jinja chat template; renders exactly what :func:`render_chat` renders.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('toy chat template: role must be system, user or assistant, got '"
    " + message['role']) }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


def render_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """Render chat ``messages`` in the toy format (the same string as ``CHAT_TEMPLATE``).

    ``messages`` are ``{"role": "system"|"user"|"assistant", "content": str}`` dicts.
    """
    parts = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(
                f"messages[{i}]['role'] = {role!r}: the toy chat format knows only {sorted(ROLES)}"
            )
        parts.append(f"{ROLES[role]}{m['content']}{END}")
    if add_generation_prompt:
        parts.append(ASSISTANT)
    return "".join(parts)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (used by ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _initial_alphabet() -> list[str]:
    """Byte-level symbols of printable ASCII, tab and newline (97 symbols)."""
    table = _bytes_to_unicode()
    return [table[b] for b in [9, 10, *range(32, 127)]]


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a fast HF tokenizer.

    ``texts`` should be raw message contents (questions, solutions), *without* chat markers:
    special tokens are split off before pre-tokenization at encode time, so a message's first
    word is seen without a leading space, exactly as in training text that starts with it.
    The result has ``vocab_size`` tokens at most (fewer if the corpus runs out of merges).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = _initial_alphabet()
    min_size = len(SPECIAL_TOKENS) + len(alphabet)
    if vocab_size < min_size:
        raise ValueError(
            f"vocab_size={vocab_size} is below the {min_size} special + alphabet tokens; "
            f"pass vocab_size >= {min_size}"
        )
    tok = Tokenizer(models.BPE(unk_token=UNK, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=END,
        unk_token=UNK,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained(path)``; :func:`load_tokenizer` (or ``AutoTokenizer``) reads
    it back."""
    tokenizer.save_pretrained(os.fspath(path))


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained(path)``, with a clear error when ``path`` holds no
    tokenizer."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(
            f"{os.path.join(path, 'tokenizer.json')} not found: save a tokenizer there first "
            "(toy_tokenizer.save_tokenizer or tokenizer.save_pretrained)"
        )
    return AutoTokenizer.from_pretrained(path)
