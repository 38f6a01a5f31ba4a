"""Image-captioning metrics as the COCO caption evaluation (pycocoevalcap) computes them.

``coco_tokenize`` does pycocoevalcap's tokenisation step (Stanford CoreNLP 3.4.1 PTBTokenizer with
``-preserveLines -lowerCase``, then punctuation removal) in Python, without Java. ``bleu``,
``rouge_l`` and ``cider_d`` are ports of pycocoevalcap's Bleu, Rouge and Cider scorers, with the
same formulas, constants and quirks, so that the numbers are comparable with published COCO
scores. ``caption_scores`` runs all of them; ``CaptionMetrics`` accumulates captions over an
epoch for a torchmetrics-style ``update``/``compute`` loop, across processes in DDP.

Scorer inputs map a key (an image id) to one hypothesis string (pycocoevalcap: a one-element
list) and to a list of reference strings, already tokenised (space-separated tokens).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

SCORE_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider")

# ---- tokenisation ------------------------------------------------------------------------------
# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS, verbatim. The match is case-sensitive and
# runs on lowercased tokens, so the bracket escapes (-lrb- ...) survive the filter, as in Java.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-"]
    + [".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Characters PTB escapes or normalises, mapped to spaced tokens (quotes all end up dropped).
_CHAR_MAP = str.maketrans(
    {
        "(": " -lrb- ",
        ")": " -rrb- ",
        "[": " -lsb- ",
        "]": " -rsb- ",
        "{": " -lcb- ",
        "}": " -rcb- ",
        '"': " '' ",
        "`": " ` ",
        "\u2018": " ` ",
        "\u201b": " ` ",
        "\u201c": " `` ",
        "\u201d": " '' ",
        "\u2019": "'",
        "\u2010": "-",
        "\u2011": "-",
        "\u2013": " -- ",
        "\u2014": " -- ",
        "\u2015": " -- ",
        "\u2026": " ... ",
        "\u00a0": " ",
        "$": " $ ",
        "%": " % ",
        "#": " # ",
        "&": " & ",
    }
)

# Words whose final period belongs to them: acronyms and single letters ("u.s.", "p.m.",
# "a."), the abbreviations CoreNLP 3.4.1 keeps in mid-sentence, and those it keeps only before
# a number ("no. 5", "fig. 3").
_ACRONYM = re.compile(r"[a-z](?:\.[a-z])*\.")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr drs prof st ste sr jr mt ft ave blvd rd inc co corp ltd "  # noqa: SIM905
    "etc vs v cf al est tel ext sq gen col lt sgt capt rev hon sen rep gov pres dept univ assn "
    "bros jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri".split()
)
_ABBREV_BEFORE_NUMBER = frozenset(["no", "nos", "fig", "figs", "ca", "pp", "art", "op", "prop"])
_KEEPS_PERIOD = _ABBREVIATIONS | _ABBREV_BEFORE_NUMBER
_KEPT_PERIOD = "\x00"  # stands for a period that stays on its word ("dog., b"); restored last


def _space_ellipsis(word: str) -> str:
    """An ellipsis is one token; an abbreviation before it keeps a period: "etc. ..."."""
    keeps_period = word in _KEEPS_PERIOD or _ACRONYM.fullmatch(word + ".") is not None
    return f"{word}{'.' if keeps_period else ''} ... "


# Applied in order to the whole lowercased caption, before splitting on whitespace.
_PRE_SPLIT = [
    (re.compile(r"(?<=[^\s.])\.(?=[,;:])"), _KEPT_PERIOD),  # "dog., b" -> "dog." ","
    (re.compile(r"[?!]+"), r" \g<0> "),  # "?!" and "!!" are single (kept) tokens
    (re.compile(r"([^\s.]*)\.\.\.+"), lambda m: _space_ellipsis(m.group(1))),
    (re.compile(r"--+"), " -- "),
    (re.compile(r";|[,:](?!\d)|(?<=[^\s\d])[,:]"), r" \g<0> "),  # not "1,000" "10:30"
    (re.compile(rf"\b({'|'.join(sorted(_ABBREV_BEFORE_NUMBER))})\.(?=\d)"), r"\1. "),  # "no.5"
]
# Tokens the steps above have already made whole.
_WHOLE = frozenset(["-lrb-", "-rrb-", "-lsb-", "-rsb-", "-lcb-", "-rcb-", "''", "``", "...", "--"])
# Words that begin or end with an apostrophe and stay whole: 'n' 'em 'til 'cause '90s 's ...
_APOSTROPHE_WORD = re.compile(r"'(?:n'?|em|till?|cause|tis|twas|\d0s|s|m|d|re|ve|ll)")
# The lexer's assimilations: words it splits without an apostrophe to split at.
_ASSIMILATIONS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "gotta": ["got", "ta"],
    "wanna": ["wan", "na"],
    "gimme": ["gim", "me"],
    "lemme": ["lem", "me"],
    "'tis": ["'t", "is"],
    "'twas": ["'t", "was"],
    "y'all": ["y'", "all"],
}
_CLITIC = re.compile(r"(.+?)('s|'m|'d|'re|'ve|'ll)")
_NEGATION = re.compile(r"(.*[a-z])(n't)")


def _split_word(word: str) -> list[str]:
    """PTB tokens of one whitespace-separated, lowercased chunk (punctuation already spaced)."""
    if len(word) == 1 or word in _WHOLE:
        return [word]
    head: list[str] = []
    tail: list[str] = []
    while len(word) > 1:  # opening quotes, dashes and periods ("-5" and ".5" stay numbers)
        if word[0] == "'" and not _APOSTROPHE_WORD.fullmatch(word.rstrip(".'-")):
            head.append("`")
        elif word[0] in "-." and not word[1].isdigit():
            head.append(word[0])
        else:
            break
        word = word[1:]
    while len(word) > 1:  # closing periods, quotes and dashes, outermost first
        if word[-1] == ".":
            if _ACRONYM.fullmatch(word) or word[:-1] in _KEEPS_PERIOD:
                break  # "no." etc. lose their period later unless a number follows
            tail.append(".")
        elif word[-1] == "'" and not _APOSTROPHE_WORD.fullmatch(word):
            tail.append("'")
        elif word[-1] == "-":
            tail.append("-")
        else:
            break
        word = word[:-1]
    if word in _ASSIMILATIONS:
        return head + _ASSIMILATIONS[word] + tail[::-1]
    clitics: list[str] = []
    while (match := _CLITIC.fullmatch(word) or _NEGATION.fullmatch(word)) is not None:
        word, clitic = match.groups()  # "i'd've" -> "i" "'d" "'ve", "can't" -> "ca" "n't"
        clitics.insert(0, clitic)
    return head + [word] + clitics + tail[::-1]


def coco_tokenize(text: str) -> str:
    """Tokenise a caption the way the COCO caption evaluation does, without Java.

    pycocoevalcap runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` and
    drops the tokens in :data:`PUNCTUATIONS`. This re-implementation lowercases, splits off
    punctuation (``,;:`` except inside numbers, ``.`` except in acronyms and known
    abbreviations, quotes, brackets, ``?!`` runs, ``$ % # &``), splits clitics the PTB way
    (``man's -> man 's``, ``can't -> ca n't``, ``cannot -> can not``, ``gonna -> gon na``),
    keeps hyphenated words whole (``black-and-white``), and drops the same punctuation tokens.

    Like the Java pipeline (which lowercases after escaping), brackets come out as ``-lrb-``,
    ``-rrb-``, ``-lsb-``... and are *not* dropped, since pycocoevalcap's list is upper case;
    ``?!``, ``!!`` and ``??`` are single tokens not in the list, so they stay too.

    Where it can differ from the Java tokenizer (checked against CoreNLP 3.4.1 on captions
    with punctuation, clitics, quotes, brackets, abbreviations and numbers): the abbreviation
    list is a subset of the lexer's and is applied after lowercasing (the lexer's rules are
    partly case-sensitive); rare constructions are not special-cased (``rock'n'roll``,
    ``5'10``, ``3 1/2``, URLs, e-mail addresses, emoticons, SGML entities other than
    ``&amp;``); characters the lexer cannot tokenise (e.g. emoji) are kept, not deleted.

    Args:
        text: one caption, any case, possibly with newlines and surrounding spaces.

    Returns:
        The space-separated tokens; ``""`` when nothing but punctuation is left.
    """
    text = text.lower().replace("&amp;", "&").translate(_CHAR_MAP)
    for pattern, replacement in _PRE_SPLIT:
        text = pattern.sub(replacement, text)
    tokens = [token for word in text.split() for token in _split_word(word)]
    for i, token in enumerate(tokens):  # "no." keeps its period only before a number
        next_is_number = i + 1 < len(tokens) and tokens[i + 1][:1].isdigit()
        if token.endswith(".") and token[:-1] in _ABBREV_BEFORE_NUMBER and not next_is_number:
            tokens[i] = token[:-1]
    kept = (token.replace(_KEPT_PERIOD, ".") for token in tokens if token not in PUNCTUATIONS)
    return " ".join(kept)


# ---- scores ------------------------------------------------------------------------------------
def _check_inputs(
    hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> list[Hashable]:
    """The keys to score, after checking that both mappings describe the same images."""
    if hypotheses.keys() != references.keys():
        only_hyp = [k for k in hypotheses if k not in references][:5]
        only_ref = [k for k in references if k not in hypotheses][:5]
        raise ValueError(
            f"hypotheses and references must have the same keys; only in hypotheses: "
            f"{only_hyp}, only in references: {only_ref}"
        )
    if not hypotheses:
        raise ValueError("no captions to score: hypotheses and references are empty")
    for key, hypothesis in hypotheses.items():
        refs = references[key]
        if not isinstance(hypothesis, str):
            raise ValueError(f"hypothesis for {key!r} must be a string, got {hypothesis!r}")
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references for {key!r} must be a non-empty list, got {refs!r}")
    return list(hypotheses)


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts of all 1..n-grams of ``words``."""
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


def bleu(
    hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4
) -> list[float]:
    """Corpus-level BLEU-1..n, as pycocoevalcap's ``Bleu(n)`` computes it.

    Clipped n-gram counts and hypothesis lengths are summed over images; the reference length
    of an image is the one closest to its hypothesis (the shorter on ties, ``option='closest'``);
    precisions are smoothed with ``tiny=1e-15`` and ``small=1e-9``: ``(correct + tiny) /
    (guess + small)``, so a BLEU without any match is about 1e-7, not 0.

    Args:
        hypotheses: key -> tokenised hypothesis.
        references: key -> tokenised references (at least one).
        n: highest n-gram order.

    Returns:
        ``[BLEU-1, ..., BLEU-n]``.

    Raises:
        ValueError: for ``n < 1``, or keys, hypotheses or references that do not fit.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tiny, small = 1e-15, 1e-9
    test_len, ref_len = 0, 0
    guess, correct = [0] * n, [0] * n
    for key in _check_inputs(hypotheses, references):
        hyp = hypotheses[key].split()
        max_counts: Counter[tuple[str, ...]] = Counter()
        ref_lens = []
        for ref in references[key]:
            words = ref.split()
            ref_lens.append(len(words))
            max_counts |= _ngrams(words, n)  # elementwise max over references
        test_len += len(hyp)
        ref_len += min((abs(length - len(hyp)), length) for length in ref_lens)[1]
        for ngram, count in _ngrams(hyp, n).items():
            correct[len(ngram) - 1] += min(max_counts[ngram], count)
        for k in range(n):
            guess[k] += max(0, len(hyp) - k)
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)  # geometric mean of p_1..p_k
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:  # brevity penalty
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    row = [0] * (len(b) + 1)
    for token in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, other in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if token == other else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(
    hypotheses: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    beta: float = 1.2,
) -> float:
    """ROUGE-L, as pycocoevalcap's ``Rouge`` computes it.

    Per image: LCS precision and recall against each reference, the maximum of each over the
    references (not the best pair), then ``F = (1 + beta^2) P R / (R + beta^2 P)``; averaged
    over images. Like pycocoevalcap, sentences are split on single spaces, so an empty string
    is one empty token (its score is 0 unless a reference is empty too).

    Args:
        hypotheses: key -> tokenised hypothesis.
        references: key -> tokenised references (at least one).
        beta: weight of recall against precision.

    Returns:
        The mean ROUGE-L F-score over images.

    Raises:
        ValueError: for keys, hypotheses or references that do not fit.
    """
    keys = _check_inputs(hypotheses, references)
    total = 0.0
    for key in keys:
        candidate = hypotheses[key].split(" ")
        precision, recall = 0.0, 0.0
        for ref in references[key]:
            tokens = ref.split(" ")
            lcs = _lcs_length(tokens, candidate)
            precision = max(precision, lcs / len(candidate))
            recall = max(recall, lcs / len(tokens))
        if precision > 0 and recall > 0:
            total += (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    return total / len(keys)


def cider_d(
    hypotheses: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
) -> float:
    """CIDEr-D, as pycocoevalcap's ``Cider`` computes it.

    TF-IDF vectors of 1..n-grams, with document frequencies counted over the references of the
    images being scored (so the score of an image depends on the whole set, and one image alone
    scores 0); per n: the hypothesis weights are clipped at the reference's, the cosine
    similarity is multiplied by a gaussian penalty ``exp(-delta^2 / (2 sigma^2))`` on the length
    difference and averaged over the references; the mean over n, times 10, averaged over
    images. As in pycocoevalcap, ``delta`` counts bigrams, not words (it differs from the word
    count difference only when a sentence is empty).

    Args:
        hypotheses: key -> tokenised hypothesis.
        references: key -> tokenised references (at least one).
        n: highest n-gram order.
        sigma: width of the length penalty.

    Returns:
        The mean CIDEr-D over images.

    Raises:
        ValueError: for ``n < 1``, or keys, hypotheses or references that do not fit.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    keys = _check_inputs(hypotheses, references)
    hyp_counts = [_ngrams(hypotheses[key].split(), n) for key in keys]
    ref_counts = [[_ngrams(ref.split(), n) for ref in references[key]] for key in keys]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:
        document_frequency.update(set().union(*counts))  # images whose references hold it
    log_images = math.log(len(keys))

    def vectorise(counts: Counter) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, term_freq in counts.items():
            k = len(ngram) - 1
            # n-grams unseen in the references count as seen once (log 1 = 0)
            weight = term_freq * (log_images - math.log(max(1.0, document_frequency[ngram])))
            vec[k][ngram] = weight
            norm[k] += weight**2
            if k == 1:  # pycocoevalcap's "length" is the number of bigrams
                length += term_freq
        return vec, [math.sqrt(x) for x in norm], length

    total = 0.0
    for hyp, refs in zip(hyp_counts, ref_counts):
        vec, norm, length = vectorise(hyp)
        score = [0.0] * n
        for ref in refs:
            vec_ref, norm_ref, length_ref = vectorise(ref)
            penalty = math.exp(-((length - length_ref) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(
                    min(weight, vec_ref[k].get(ngram, 0.0)) * vec_ref[k].get(ngram, 0.0)
                    for ngram, weight in vec[k].items()
                )
                if norm[k] != 0 and norm_ref[k] != 0:
                    val /= norm[k] * norm_ref[k]
                score[k] += val * penalty
        total += sum(score) / n / len(refs) * 10.0
    return total / len(keys)


def caption_scores(
    hypotheses: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    tokenize: bool = True,
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of a set of captions, as the COCO evaluation reports them.

    Args:
        hypotheses: key (image id) -> generated caption.
        references: key -> ground-truth captions (at least one).
        tokenize: run :func:`coco_tokenize` on every caption first (as pycocoevalcap does);
            ``False`` for captions that are already tokenised.

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider"}`` -> score (BLEU and ROUGE-L in
        [0, 1], CIDEr-D in [0, 10]).

    Raises:
        ValueError: for empty input, keys that differ, or an image without references.
    """
    _check_inputs(hypotheses, references)
    if tokenize:
        hypotheses = {key: coco_tokenize(hyp) for key, hyp in hypotheses.items()}
        references = {key: [coco_tokenize(r) for r in refs] for key, refs in references.items()}
    scores = bleu(hypotheses, references, n=4)
    scores += [rouge_l(hypotheses, references), cider_d(hypotheses, references)]
    return dict(zip(SCORE_NAMES, scores))


# ---- torchmetrics ------------------------------------------------------------------------------
class CaptionMetrics(Metric):
    """BLEU-1..4, ROUGE-L and CIDEr-D over all captions seen since the last ``reset()``.

    The states are Python lists of strings (one entry per image; keys are running indices), so
    ``compute()`` scores the whole epoch at once, as corpus-level BLEU and CIDEr-D's document
    frequencies require. torchmetrics can only all-gather tensors: in DDP (``torch.distributed``
    initialised with world size > 1) ``compute()`` gathers the lists from every process with
    ``all_gather_object`` instead, scores the union on every rank, and restores the local
    lists afterwards. A ``DistributedSampler`` that pads the last batch repeats a few images in
    that union, which moves the scores slightly away from the single-process ones.

    ``compute()`` returns a dict of scalar tensors keyed by :data:`SCORE_NAMES`. Lightning's
    ``self.log_dict(metric_or_collection)`` logs only metrics whose ``compute()`` is a scalar,
    so the module calls ``compute()`` itself at epoch end, logs the dict (``val/caption/cider``
    ...) and calls ``reset()``. It works inside a ``MetricCollection``: its keys are merged into
    the collection's output (prefixed ``<name>_`` when other metrics are there too). Two
    ``CaptionMetrics`` in one collection need ``compute_groups=False``, since torchmetrics
    compares list states element by element as tensors.

    Args:
        tokenize: run :func:`coco_tokenize` on the captions (``False`` if already tokenised).
        **kwargs: passed to ``torchmetrics.Metric`` (``process_group``...).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    hypotheses: list[str]
    references: list[list[str]]

    def __init__(self, tokenize: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenize = tokenize
        self.add_state("hypotheses", default=[], dist_reduce_fx=None)
        self.add_state("references", default=[], dist_reduce_fx=None)

    def update(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Add a batch: one generated caption and its reference captions per image.

        Raises:
            ValueError: when the lengths differ, or a caption or reference list is malformed.
        """
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference lists")
        for hypothesis, refs in zip(hypotheses, references):
            if not isinstance(hypothesis, str):
                raise ValueError(f"a hypothesis must be a string, got {hypothesis!r}")
            if isinstance(refs, str) or len(refs) == 0 or not all(isinstance(r, str) for r in refs):
                raise ValueError(f"references must be a non-empty list of strings, got {refs!r}")
        self.hypotheses.extend(hypotheses)
        self.references.extend(list(refs) for refs in references)

    def compute(self) -> dict[str, Tensor]:
        """The scores of everything accumulated (on every process), as float32 scalars."""
        scores = caption_scores(
            dict(enumerate(self.hypotheses)),
            dict(enumerate(self.references)),
            tokenize=self.tokenize,
        )
        return {name: torch.tensor(value, device=self.device) for name, value in scores.items()}

    def _sync_dist(
        self, dist_sync_fn: Callable | None = None, process_group: Any | None = None
    ) -> None:
        """Gather the string lists of every process; replaces torchmetrics' tensor gather."""
        group = process_group or self.process_group
        world_size = dist.get_world_size(group)
        if world_size == 1:
            return
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, (self.hypotheses, self.references), group=group)
        self.hypotheses = [hyp for hyps, _ in gathered for hyp in hyps]
        self.references = [refs for _, all_refs in gathered for refs in all_refs]

    def _apply(
        self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = ()
    ) -> nn.Module:
        """``.to(device)`` and friends: strings stay where they are."""
        return super()._apply(fn, exclude_state=(*exclude_state, "hypotheses", "references"))

    def __hash__(self) -> int:
        """Unique per instance; torchmetrics hashes list states, and a reference list is not."""
        return hash((self.__class__.__name__, id(self)))

    def _move_list_states_to_cpu(self) -> None:
        """``compute_on_cpu``: nothing to move, strings live on the CPU."""
