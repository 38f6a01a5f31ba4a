"""The official VQA answer processing (GT-Vision-Lab/VQA ``vqaEval.py``), torch-free.

Shared by the data side (the answer classes and the soft targets of a VQA data set) and the
metric (:class:`mmtrain.metrics.vqa.VQAAccuracy`). ``normalize_answer`` is the evaluation's
answer normalisation (``processPunctuation`` then ``processDigitArticle``), with its tables kept
verbatim as module constants and its quirks kept too, so that numbers are comparable with
published VQA v2 results. ``vqa_accuracy`` is the per-question accuracy (the ``10 choose 9``
average of ``min(#matches / 3, 1)``). ``answer_vocabulary`` and ``soft_scores`` build the answer
classes and the soft targets of the usual classification formulation of VQA.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

# ---- the official tables (vqaEval.py, VQAEval.__init__), verbatim ----------------------------
# Keys with capitals ("Im", "Ive", "Id've", "I'dve") never match, as in the official code: the
# lookup runs on lowercased words. "somebody'd" -> "somebodyd" is the official table's own typo.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
# The official ``manualMap``: number words up to ten, and "none" -> "0".
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES: tuple[str, ...] = ("a", "an", "the")
# The official ``punct`` list, in its order. Not in it: "." (PERIOD_STRIP), "'", ":", "*", "#",
# "$", "%", "&".
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip
# Official ``periodStrip``. "(?!<=\d)" is a lookahead for the text "<=" and a digit, never true
# before a ".", so in effect: every "." not followed by a digit ("1.5" keeps its period).
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# Official ``commaStrip``: a comma between digits ("1,000") anywhere in the answer makes every
# punctuation mark be deleted instead of replaced by a space.
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# The official code calls ``periodStrip.sub("", text, re.UNICODE)``: re.UNICODE (32) lands in
# the ``count`` argument, so at most 32 periods are removed. Kept for faithfulness.
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: punctuation to spaces (or deleted), periods deleted.

    A mark of :data:`PUNCTUATION` is deleted when the answer has it next to a space (``"red,
    blue"``) or has a comma between digits anywhere (``"1,000"``); otherwise it becomes a space
    (``"t-shirt"`` -> ``"t shirt"``). Both tests look at the input, not at the text so far.
    Then every period not followed by a digit is deleted (at most 32, see above).

    Args:
        text: an answer.

    Returns:
        The answer with its punctuation processed (spaces not yet collapsed).
    """
    out = text
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, number words, articles, contractions.

    Lowercases and splits on whitespace, maps number words with :data:`MANUAL_MAP` (``"two"``
    -> ``"2"``, ``"none"`` -> ``"0"``), drops :data:`ARTICLES`, then restores apostrophes with
    :data:`CONTRACTIONS` (``"dont"`` -> ``"don't"``), and joins with single spaces.

    Args:
        text: an answer (after :func:`process_punctuation`).

    Returns:
        The normalised words joined by single spaces.
    """
    words = [MANUAL_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def _clean_whitespace(answer: str) -> str:
    """The official first step for every answer: tabs and newlines to spaces, then strip."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: str) -> str:
    """Normalise an answer as the official VQA evaluation does.

    Tabs and newlines become spaces, the answer is stripped, then
    :func:`process_punctuation` and :func:`process_digit_article` run: ``"Two dogs!"`` ->
    ``"2 dogs"``, ``"the T-shirt."`` -> ``"t shirt"``, ``"1,000"`` -> ``"1000"``, ``"1.5"``
    stays, ``"dont"`` -> ``"don't"``.

    Args:
        answer: a predicted or human answer.

    Returns:
        The normalised answer; ``""`` when nothing is left (``"the"``, ``"?"``).
    """
    return process_digit_article(process_punctuation(_clean_whitespace(answer)))


def _check_answers(answers: Sequence[str], what: str = "answers") -> None:
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"{what} must be a non-empty list of strings, got {answers!r}")
    if not all(isinstance(answer, str) for answer in answers):
        raise ValueError(f"{what} must be a non-empty list of strings, got {answers!r}")


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official VQA accuracy of one predicted answer against the human answers.

    For each human answer, the other ``n - 1`` answers are compared with the prediction and
    score ``min(#matches / 3, 1)``; the accuracy is the mean over the ``n`` answers (``n`` is
    10 in VQA v1/v2, and the formula is the same for fewer). So an answer given by 3 or more of
    10 humans scores 1, by 2 humans 0.6, by 1 human 0.3, by none 0.

    Normalisation follows the current official ``vqaEval.py``: tabs and newlines become spaces
    and all answers are stripped; then, only when the human answers are not all identical,
    the human answers and the prediction go through ``processPunctuation`` and
    ``processDigitArticle`` (:func:`normalize_answer`). When all humans agree the strings are
    compared as they are, so ``"Yes"`` does not match ten ``"yes"`` (the authors' reason: not
    to alter answers that read text off the image, GT-Vision-Lab/VQA issue #14). Answers are
    left out by position, as the official code leaves out one answer record (each has its own
    ``answer_id``), so duplicates are not all removed at once.

    Args:
        prediction: the predicted answer, raw.
        answers: the human answers of the question, raw (as in the annotation file).

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: for a prediction that is not a string, or an empty answer list.
    """
    if not isinstance(prediction, str):
        raise ValueError(f"prediction must be a string, got {prediction!r}")
    _check_answers(answers)
    humans = [_clean_whitespace(answer) for answer in answers]
    predicted = _clean_whitespace(prediction)
    if len(set(humans)) > 1:
        humans = [process_digit_article(process_punctuation(answer)) for answer in humans]
        predicted = process_digit_article(process_punctuation(predicted))
    matches = sum(answer == predicted for answer in humans)
    # Leaving out answer i leaves matches - [answer i matches] matches among the others.
    total = sum(min(1.0, (matches - (answer == predicted)) / 3) for answer in humans)
    return total / len(humans)


# ---- answer classes ------------------------------------------------------------------------------
def answer_vocabulary(answer_lists: Iterable[Sequence[str]], top_k: int = 3129) -> list[str]:
    """The ``top_k`` most frequent normalised answers: the classes of a VQA classifier.

    Every answer of every list counts once, after :func:`normalize_answer`; empty answers (an
    article alone, punctuation) are left out. 3129 is the usual VQA v2 size (the answers given
    as ``multiple_choice_answer`` at least 9 times in train2014 + val2014); to count only the
    ``multiple_choice_answer``, pass ``[[a] for a in dataset.values("answer")]``.

    Args:
        answer_lists: the answers of each training question, raw or normalised.
        top_k: how many answers to keep (fewer when there are fewer distinct answers).

    Returns:
        The answers by decreasing count, ties in string order.

    Raises:
        ValueError: for ``top_k < 1``, or an answer list that is not a list of strings.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    counts: Counter[str] = Counter()
    for answers in answer_lists:
        if isinstance(answers, str) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"each answer list must be a list of strings, got {answers!r}")
        counts.update(normalize_answer(answer) for answer in answers)
    counts.pop("", None)
    ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    return [answer for answer, _ in ranked[:top_k]]


def soft_scores(answers: Sequence[str], vocab_index: dict[str, int]) -> dict[int, float]:
    """Soft classification targets of one question: ``{class index: min(count / 3, 1)}``.

    ``count`` is how many human answers normalise (:func:`normalize_answer`) to the class's
    answer; answers outside the vocabulary are dropped. ``min(count / 3, 1)`` is the short form
    of the metric in the VQA paper and the usual approximation of the official ``10 choose 9``
    average as a soft target for VQA classifiers: it gives 1/3, 2/3, 1 for 1, 2, 3 matching
    answers of 10, where the official average (:func:`vqa_accuracy`) gives 0.3, 0.6, 0.9, and
    both give 1 from 4 on. Note that bottom-up-attention-vqa (``get_score``: 0, 0.3, 0.6, 0.9,
    1) and Pythia/MMF (which compute the average) train on the exact average, not this form.

    Args:
        answers: the human answers of the question, raw or normalised.
        vocab_index: answer -> class index, over normalised answers (from
            :func:`answer_vocabulary`).

    Returns:
        The non-zero targets, by class index.

    Raises:
        ValueError: for an answer list that is not a list of strings.
    """
    if isinstance(answers, str) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"answers must be a list of strings, got {answers!r}")
    counts = Counter(normalize_answer(answer) for answer in answers)
    return {
        vocab_index[answer]: min(count / 3, 1.0)
        for answer, count in counts.items()
        if answer in vocab_index
    }
