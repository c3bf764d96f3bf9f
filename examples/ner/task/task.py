"""Named entities in tweets (WNUT-16): a BiLSTM tagger over hashed words and characters.

Each silo's datasets are folders from ``fedsilo example ner prepare``, holding
``token<TAB>tag`` text with one BIO tag per token over WNUT-16's ten entity types.

No vocabulary is built from the data. A word's id is a fixed hash of its normalised form
(lower case, digits as 0, every URL one token, every @mention another) into
``extra.buckets`` buckets, and a character's id comes from its code point. Every silo
maps every word the same way without looking at any other silo's text, nothing about the
words travels besides the trained parameters, and a word no silo has seen still gets an
id. The tag set is WNUT-16's own definition, fixed before any data is read.

The network is that of Lample et al. 2016 and Ma and Hovy 2016, trained from scratch: a
character CNN (max-pooled over each token's characters) beside the word embedding, a
bidirectional LSTM over the tweet, and a linear layer giving each token's tag. Under
local DP-SGD (``privacy: {local: ...}``) the LSTM is Opacus's ``DPLSTM``, which computes
per-example gradients and has the same parameters as ``nn.LSTM``, so a model trained
either way loads in the other. Precision, recall and F1 are entity-level: an entity
counts as found when its span and its type both match exactly (as CoNLL's ``conlleval``
counts them).
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from pathlib import Path

import torch
from opacus.layers import DPLSTM  # type: ignore[import-untyped]
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import DataLoader, TensorDataset

from fedsilo.datasets import Sentence, read_sentences
from fedsilo.task import Context

TYPES = (
    "company",
    "facility",
    "geo-loc",
    "movie",
    "musicartist",
    "other",
    "person",
    "product",
    "sportsteam",
    "tvshow",
)
TAGS = ("O", *(f"{prefix}-{kind}" for kind in TYPES for prefix in ("B", "I")))
_TAG_ID = {tag: i for i, tag in enumerate(TAGS)}
_CHARS = 256  # 0 pads; ASCII keeps its code; any other character shares one of 128 ids
_MAX_CHARS = 20  # characters of a token the CNN reads
_DIGIT = re.compile(r"\d")
Span = tuple[int, int, str]


def _normalise(token: str) -> str:
    low = token.lower()
    if low.startswith(("http://", "https://", "www.")):
        return "<url>"
    if low.startswith("@") and len(low) > 1:
        return "<user>"
    return _DIGIT.sub("0", low)


def _word_id(token: str, buckets: int) -> int:
    return zlib.crc32(_normalise(token).encode("utf-8")) % buckets + 1


def _char_id(char: str) -> int:
    code = ord(char)
    return code if 0 < code < 128 else 128 + code % 128


def _buckets(ctx: Context) -> int:
    return int(ctx.hyperparameters.extra.get("buckets", 8192))


@lru_cache(maxsize=8)
def _load(path: Path, buckets: int) -> tuple[list[Sentence], TensorDataset]:
    """The sentences of ``path`` and their encoding: word ids, char ids, tag ids, lengths."""
    sentences = read_sentences(path)
    longest = max(len(s.tokens) for s in sentences)
    n = len(sentences)
    words = torch.zeros(n, longest, dtype=torch.long)
    chars = torch.zeros(n, longest, _MAX_CHARS, dtype=torch.long)
    tags = torch.zeros(n, longest, dtype=torch.long)
    lengths = torch.zeros(n, dtype=torch.long)
    for i, sentence in enumerate(sentences):
        lengths[i] = len(sentence.tokens)
        for j, (token, tag) in enumerate(zip(sentence.tokens, sentence.tags, strict=True)):
            if tag not in _TAG_ID:
                raise ValueError(
                    f"{path}: tag {tag!r} is not one of WNUT-16's ({', '.join(TYPES)})"
                )
            words[i, j] = _word_id(token, buckets)
            tags[i, j] = _TAG_ID[tag]
            ids = [_char_id(c) for c in token[:_MAX_CHARS]]
            chars[i, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return sentences, TensorDataset(words, chars, tags, lengths)


class Tagger(nn.Module):
    """Hashed word embedding + character CNN -> BiLSTM -> a tag per token."""

    def __init__(
        self,
        *,
        buckets: int,
        word_dim: int,
        char_dim: int,
        char_filters: int,
        hidden: int,
        dropout: float,
        private: bool,
    ) -> None:
        super().__init__()
        self.words = nn.Embedding(buckets + 1, word_dim)
        self.chars = nn.Embedding(_CHARS, char_dim)
        # a (1 x 3) kernel slides over each token's characters; the batch stays first,
        # as Opacus's per-example gradients need
        self.char_cnn = nn.Conv2d(char_dim, char_filters, kernel_size=(1, 3), padding=(0, 1))
        self.dropout = nn.Dropout(dropout)
        lstm = DPLSTM if private else nn.LSTM
        self.lstm = lstm(word_dim + char_filters, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, len(TAGS))

    def forward(
        self, words: torch.Tensor, chars: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Tag scores, batch x tokens x tags, for padded ``words`` and ``chars``."""
        # batch, char_dim, tokens, chars; contiguous, or Opacus 1.6 computes wrong
        # per-example gradients for the convolution
        c = self.chars(chars).permute(0, 3, 1, 2).contiguous()
        c = torch.relu(self.char_cnn(c)).amax(dim=3).transpose(1, 2)
        x = self.dropout(torch.cat([self.words(words), c], dim=2))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.out(self.dropout(out))


def model(ctx: Context) -> nn.Module:
    """The tagger; its sizes come from ``extra`` (``word_dim``, ``hidden``...).

    ``extra.o_bias`` is added to the output layer's initial bias for the ``O`` tag.
    """
    extra = ctx.hyperparameters.extra
    tagger = Tagger(
        buckets=_buckets(ctx),
        word_dim=int(extra.get("word_dim", 64)),
        char_dim=int(extra.get("char_dim", 24)),
        char_filters=int(extra.get("char_filters", 48)),
        hidden=int(extra.get("hidden", 96)),
        dropout=float(extra.get("dropout", 0.5)),
        private=ctx.privacy is not None,
    )
    # random, untrained word vectors still tell words apart; keeping them fixed spares
    # DP-SGD the noise it would add to every one of their weights
    tagger.words.weight.requires_grad_(bool(extra.get("train_words", True)))
    # a head start towards O, the tag of 95 % of the tokens: under DP-SGD's clipped, noisy
    # steps, learning that prior from a uniform start spends the steps entities need
    with torch.no_grad():
        tagger.out.bias[_TAG_ID["O"]] += float(extra.get("o_bias", 0.0))
    return tagger


def _trim(
    words: torch.Tensor, chars: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    longest = int(lengths.max())
    return words[:, :longest], chars[:, :longest], tags[:, :longest], lengths


def _sentence_loss(
    scores: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor, entity_weight: float
) -> torch.Tensor:
    """Each tweet's weighted mean token loss, averaged over the tweets of the batch.

    Tokens inside an entity weigh ``entity_weight`` times an ``O`` token: 95 % of the
    tokens are ``O``, and a tagger that predicts only ``O`` is where training starts (and,
    under DP-SGD's noise, where it can stay). Averaging per tweet first makes each tweet's
    gradient depend on that tweet alone, as DP-SGD's per-example clipping assumes.
    """
    losses = nn.functional.cross_entropy(scores.transpose(1, 2), tags, reduction="none")
    inside = torch.arange(tags.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    weights = inside * torch.where(tags == _TAG_ID["O"], 1.0, entity_weight)
    per_tweet = (losses * weights).sum(dim=1) / weights.sum(dim=1)
    return per_tweet.mean()


def train(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Adam (or SGD with momentum 0.9, ``extra.optimizer: sgd``) on the tweets' tag loss."""
    _, data = _load(ctx.input("train"), _buckets(ctx))
    hp = ctx.hyperparameters
    generator = torch.Generator().manual_seed(ctx.seed)
    loader = DataLoader(data, batch_size=hp.batch_size, shuffle=True, generator=generator)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if hp.extra.get("optimizer", "adam") == "sgd":
        optimizer = torch.optim.SGD(trained, lr=hp.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(trained, lr=hp.lr)
    entity_weight = float(hp.extra.get("entity_weight", 1.0))
    net = model
    if ctx.privacy is not None:
        net, optimizer, loader = ctx.privacy.make_private(model, optimizer, loader)
    total, batches = 0.0, 0
    for _ in range(hp.epochs):
        for batch in loader:
            if len(batch[0]) == 0:  # Poisson sampling under DP can draw an empty batch
                continue
            words, chars, tags, lengths = _trim(*batch)
            optimizer.zero_grad()
            loss = _sentence_loss(net(words, chars, lengths), tags, lengths, entity_weight)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
    return {"loss": total / max(batches, 1), "num_samples": len(data)}


def spans(tags: list[str] | tuple[str, ...]) -> set[Span]:
    """The entities of a BIO sequence as ``(start, end, type)``, ``end`` exclusive.

    As ``conlleval`` reads them: an ``I-`` tag that does not continue an entity of its
    type starts a new one.
    """
    found: set[Span] = set()
    start, kind = -1, ""
    for i, tag in enumerate((*tags, "O")):
        prefix, _, tag_kind = tag.partition("-")
        continues = prefix == "I" and tag_kind == kind and start >= 0
        if start >= 0 and not continues:
            found.add((start, i, kind))
            start, kind = -1, ""
        if prefix in ("B", "I") and not continues:
            start, kind = i, tag_kind
    return found


def evaluate(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Entity-level precision, recall and F1 (exact span and type), token accuracy."""
    sentences, data = _load(ctx.input("test"), _buckets(ctx))
    words, chars, _, lengths = data.tensors
    predicted = torch.cat(
        [
            _predict(model, words[i : i + 256], chars[i : i + 256], lengths[i : i + 256])
            for i in range(0, len(data), 256)
        ]
    )
    gold_count = found_count = correct = 0
    right_tokens = 0
    for i, sentence in enumerate(sentences):
        n = len(sentence.tokens)
        guess = [TAGS[int(t)] for t in predicted[i, :n]]
        gold, found = spans(sentence.tags), spans(guess)
        gold_count += len(gold)
        found_count += len(found)
        correct += len(gold & found)
        right_tokens += sum(g == t for g, t in zip(guess, sentence.tags, strict=True))
    precision = correct / found_count if found_count else 0.0
    recall = correct / gold_count if gold_count else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "token_accuracy": right_tokens / max(int(lengths.sum()), 1),
        "entities": gold_count,
        "entities_found": found_count,
        "entities_correct": correct,
        "num_samples": len(sentences),
    }


def _predict(
    model: nn.Module, words: torch.Tensor, chars: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    longest = words.shape[1]
    scores = model(words[:, : int(lengths.max())], chars[:, : int(lengths.max())], lengths)
    guess = scores.argmax(dim=2)
    return nn.functional.pad(guess, (0, longest - guess.shape[1]))
