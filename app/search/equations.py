"""Equations a step writes that are false, checked exactly.

A 0.5B draft writes "5 + 7 + 14 = 36" as fluently as "5 + 7 + 14 = 26", and a
reward that reads hidden states ranks how a solution is going rather than
whether one sum adds up; the target's probability of "36" (arithmetic.py) can
still be 0.3. Arithmetic between written numbers is the one part of a step
that can be checked for certain, so the search checks it: a step that writes
an equation whose two sides differ gets reward 0 (settings.equation_check).

The check is built to have no false alarms rather than to catch everything:
- the left side is the whole run of numbers, + - * / and parentheses (plain
  or LaTeX: \\times, \\cdot, \\div, \\frac{a}{b}, dollar signs, "x" between
  numbers) right before "=", less a list marker ("1. ", "- "), and it must
  be one expression with an operator. A run that starts or ends inside
  something else checks nothing: "12 slices * 1/3 = 4", "15 pages x 1/3 = 5",
  "$400 000 x 3/100", "1 1/2 + 2", "(2x - 135) + 90 + 60 = 360", "x^2 + 5";
- the right side is a single number (not the start of another expression,
  a coefficient as in "2x", or a number with a space as in "12 000");
- it is false only if it is false both with the usual precedence and read left
  to right ("12 + 8 / 2 = 10" is sloppy, not wrong), and by more than the last
  written digit (10 / 3 = 3.33 and 7 / 2 = 3 pass, 36 / 3 = 13 does not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_LATEX = [
    (re.compile(r"\\[()\[\]]"), " "),  # \( \) \[ \] math delimiters
    (re.compile(r"\\left|\\right"), ""),
    (re.compile(r"\\times|\\cdot|×|⋅|∙"), "*"),
    (re.compile(r"\\div|÷"), "/"),
    (re.compile(r"\\?\$"), ""),
    (re.compile(r"[−–]"), "-"),  # minus sign, en dash
    (re.compile(r"(?<=[\d)])\s+[xX]\s+(?=[\d(])"), " * "),  # "60 x 2/3"
]
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_TOKEN = re.compile(rf"\s*({_NUMBER}|[-+*/()])")
_LEFT = re.compile(r"[\d.,+\-*/() \t]*$")
_RIGHT = re.compile(
    rf"\s*(-?(?:{_NUMBER}))"
    r"(?![\d.,]*\d)"  # all of the number
    r"(?![A-Za-z_^!{])"  # nor a coefficient: "= 2x"
    r"(?!\s\d)"  # nor a number with spaces in it: "= $12 000"
    r"(?!\s*(?:[-+*/^(%=]|\\))"  # and not the start of an expression, a percent or a chain
)
# What may stand right before a left side: "x^2 + 5", "a_3 + 4" and "S2 + 1" start inside a term,
# and "of 1/3", "by 1/3" or "pages x 1/3" take a factor from the words before.
_GLUED = re.compile(r"[A-Za-z0-9_^}!%.]$")
_OPERATOR_WORD = re.compile(r"\b(?:x|X|of|by|times|plus|minus|per|over|than)$")
_LIST_MARKER = re.compile(r"\s*(?:\d+[.)]|[-*+])\s+(?=\S)")
# Left sides this long are prose that happens to be digits, not a sum.
_MAX_TOKENS = 41


@dataclass(frozen=True)
class FalseEquation:
    left: str  # as normalised: "5 + 7 + 14"
    written: str  # the right side as written: "36"
    value: Fraction  # what the left side is: 26

    def __str__(self) -> str:
        return f"{self.left} = {self.written} (it is {_show(self.value)})"


def false_equations(text: str) -> list[FalseEquation]:
    """The equations in `text` whose left side's value is not the number written after "="."""
    text = _normalise(text)
    found = []
    for match in re.finditer(r"(?<![<>=!])=(?!=)", text):
        right = _RIGHT.match(text, match.end())
        left = _left_side(text[: match.start()]) if right else None
        if right is None or left is None:
            continue
        tokens, expression = left
        written = right.group(1)
        usual, left_to_right = _evaluate(tokens, precedence=True), _evaluate(tokens, precedence=False)
        if usual is None or left_to_right is None:
            continue
        target = Fraction(written.replace(",", ""))
        if not _close(usual, target, written) and not _close(left_to_right, target, written):
            found.append(FalseEquation(expression, written, usual))
    return found


def _normalise(text: str) -> str:
    for pattern, replacement in _LATEX:
        text = pattern.sub(replacement, text)
    while True:
        replaced = _FRAC.sub(r"((\1)/(\2))", text)
        if replaced == text:
            return text
        text = replaced


def _left_side(before: str) -> tuple[list[str], str] | None:
    """The expression with an operator that ends `before`: all of the run of
    numbers and operators there (less a list marker), or None."""
    run = _LEFT.search(before)
    assert run is not None  # the pattern matches the empty run
    candidate, prefix = run.group(0), before[: run.start()]
    if (_GLUED if candidate[:1] not in (" ", "\t") else _OPERATOR_WORD).search(prefix):
        return None
    marker = _LIST_MARKER.match(candidate)
    if marker and (not prefix or prefix.endswith("\n")):  # a marker starts a line
        candidate = candidate[marker.end() :]
    tokens = _tokenize(candidate.strip())
    if tokens is None or len(tokens) > _MAX_TOKENS or not _is_expression(tokens):
        return None
    return tokens, " ".join(tokens).replace("( ", "(").replace(" )", ")")


def _tokenize(text: str) -> list[str] | None:
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            return None
        tokens.append(match.group(1))
        at = match.end()
    return tokens


def _is_expression(tokens: list[str]) -> bool:
    """Numbers joined by binary operators, parentheses balanced, a leading minus at most."""
    depth, expect_operand, binary = 0, True, 0
    for i, token in enumerate(tokens):
        if expect_operand:
            if token == "(":
                depth += 1
            elif token == "-" and i == 0:
                continue
            elif token[0].isdigit() or token[0] == ".":
                expect_operand = False
            else:
                return False
        elif token == ")":
            depth -= 1
            if depth < 0:
                return False
        elif token in "+-*/":
            expect_operand, binary = True, binary + 1
        else:
            return False
    return depth == 0 and not expect_operand and binary > 0


def _evaluate(tokens: list[str], *, precedence: bool) -> Fraction | None:
    """The expression's value (None on division by zero)."""
    try:
        value, rest = _sum(tokens, precedence)
    except ZeroDivisionError:
        return None
    return value if not rest else None


def _sum(tokens: list[str], precedence: bool) -> tuple[Fraction, list[str]]:
    value, tokens = (_product if precedence else _operand)(tokens, precedence)
    while tokens and tokens[0] in ("+", "-", *(() if precedence else ("*", "/"))):
        op = tokens[0]
        right, tokens = (_product if precedence else _operand)(tokens[1:], precedence)
        value = _apply(op, value, right)
    return value, tokens


def _product(tokens: list[str], precedence: bool) -> tuple[Fraction, list[str]]:
    value, tokens = _operand(tokens, precedence)
    while tokens and tokens[0] in ("*", "/"):
        op = tokens[0]
        right, tokens = _operand(tokens[1:], precedence)
        value = _apply(op, value, right)
    return value, tokens


def _operand(tokens: list[str], precedence: bool) -> tuple[Fraction, list[str]]:
    if tokens[0] == "-":
        value, rest = _operand(tokens[1:], precedence)
        return -value, rest
    if tokens[0] == "(":
        value, rest = _sum(tokens[1:], precedence)
        return value, rest[1:]  # the ")" (_is_expression checked the balance)
    return Fraction(tokens[0].replace(",", "")), tokens[1:]


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b


def _close(value: Fraction, written: Fraction, text: str) -> bool:
    """Equal up to the last written digit, rounded or cut off."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(value - written) < Fraction(1, 10**decimals)


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.4g}"
