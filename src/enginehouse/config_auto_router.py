"""The ``auto`` router's default routes: code, math, writing and general (the default route).

Examples and rules were written for this project (none copied from a dataset). They are the only
text the embedding tier compares against; the labelled prompts that measure the router live in
``bench/routing_prompts.jsonl`` and share no sentence with these (``bench/routing.py`` checks).

Rules are for signals that are nearly always right on their own (a code fence, a traceback, "write a
haiku", "derivative of"); ambiguous words get small weights so they only add up, and a few negative
weights undo common false friends ("integrate" in an API, "regression" tests, "Taylor Swift").
Candidates are Ollama library names, best first, ending with the bundled model so that every route can
be served on a fresh install; a config file replaces them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from enginehouse.config_auto_examples import (
    ABSTAIN_EXAMPLES,
    CODE_EXAMPLES,
    GENERAL_EXAMPLES,
    MATH_EXAMPLES,
    WRITING_EXAMPLES,
)
from enginehouse.config_routers import Route, Router, Rule, router_from_table
from enginehouse.errors import InvalidRequest

BUNDLED = "smollm2:135m"

CODE_RULES = (
    Rule(r"```", 2.0),
    Rule(r"\bdef \w+\s*\(|\bfn \w+\s*\(|\bfunc \w+\s*\(|\bfunction [a-z_]\w+\s*\(", 2.0),
    Rule(r"#include\s*<|\bpublic static void\b|\bconsole\.log\(|\bsystem\.out\.print|\bprintf\(", 2.0),
    Rule(r"(?-i:\bSELECT\b[\s\S]*\bFROM\b|\bINSERT INTO\b|\bCREATE TABLE\b|\bALTER TABLE\b)", 2.0),
    Rule(r"\btraceback \(most recent call last\)|\b\w+(error|exception)\b:|\bsegmentation fault\b", 2.0),
    # stack-trace and error-output shapes, which carry no code word: a Python frame, a Java/JS frame,
    # a compiler's "error[E0502]:", "npm ERR!", an errno name, "fatal:"/"error:" at a line's start
    Rule(r"\bfile \"[^\"]+\", line \d+|\n\s+at [\w.$<>]+\s*\(|\berror\[e\d+\]|\bnpm err!", 2.0),
    Rule(
        r"(?-i:\bE(ACCES|NOENT|CONNREFUSED|ADDRINUSE|TIMEDOUT|PERM|RESOLVE)\b)|(^|\n)\s*(fatal|error|panic):",
        2.0,
    ),
    Rule(r"(?-i:\b[A-Z][a-z]+(?:[A-Z][a-z]+)*(Error|Exception|Warning)\b)|\bcommand not found\b", 1.5),
    Rule(r"\bstack ?trace\b|\bnull ?pointer\b|\bundefined is not\b|\bsegfault\b|\bcore dumped\b", 1.5),
    Rule(r"\b(uncaught|unhandled|nullreference|referenceerror|cannot read propert|is not defined)\b", 1.5),
    Rule(r"\b(python|javascript|typescript|golang|kotlin|php|haskell|c\+\+|c#|perl|lua|elixir)\b", 1.5),
    Rule(r"\b(rust|java|swift|ruby|scala|go)\b (code|program|function|crate|library|script|app)", 1.0),
    Rule(r"\bin (rust|java|swift|ruby|scala|go|c|r)\b[?.!]?\s*$", 1.0),
    Rule(r"\b(sql|postgres(ql)?|mysql|sqlite|mongodb|redis|graphql)\b", 1.0),
    Rule(r"\b(bash|shell|zsh|powershell) (script|command|one-liner)|\b(grep|sed|awk|chmod|curl)\b", 1.0),
    Rule(r"\b(docker(file)?|kubernetes|kubectl|k8s|nginx|terraform|ansible|systemd|cron ?job)\b", 1.0),
    Rule(r"\b(git (rebase|merge|commit|push|pull|stash|branch|reset)|merge conflict|pull request)\b", 1.5),
    Rule(
        r"\bgit (add|clone|fetch|log|diff|checkout|switch|init|remote|tag|status)\b|\bgithub actions\b", 1.5
    ),
    Rule(r"\b(regex|regular expression|json|yaml|csv parser|api endpoint|rest api|http request)\b", 0.75),
    Rule(r"\b(react|vue|angular|django|flask|fastapi|node\.?js|npm|pip install|pandas|numpy)\b", 1.0),
    Rule(
        r"\b(flutter|android studio|xcode|gradle|maven|webpack|vite|babel|eslint|tsconfig|cargo|cmake|"
        r"makefile|jupyter|vs ?code|vim|pygame|spring boot|express|electron|unity|arduino|heroku|vercel)\b",
        1.0,
    ),
    Rule(r"\b(compile[rds]?|compiler error|linker|refactor|unit tests?|pytest|jest|debug(ger|ging)?)\b", 1.0),
    Rule(r"\b(function|method|class|variable|array|loop|recursion|pointer|struct|enum|interface)\b", 0.5),
    Rule(
        r"\b(websockets?|sockets?|backend|frontend|database|runtime|mutex|thread pool|webhook|cli tool)\b",
        1.0,
    ),
    Rule(r"\b(localhost|cors|ssh|dns|endpoint|deploy(ed|ing|ment)?|server|api|sdk|url|http|ci)\b", 0.5),
    Rule(r"\b(bug|exception|stack overflow|memory leak|race condition|deadlock|async|await)\b", 0.5),
    Rule(r"\b(code|coding|script|program(ming)?|algorithm|implement|codebase|repo(sitory)?)\b", 0.5),
    Rule(r"\b(discord|telegram|slack) bot\b|\b(macro|vba|apps script)\b", 1.0),
    Rule(
        r"\b(write|create|implement|code|build|make|generate)( me)? (a|an|the|some)( \w+)? (function|method|"
        r"class|script|program|query|regex|endpoint|component|unit tests?|dockerfile|migration|api)\b",
        1.5,
    ),
    Rule(r"\bscript (bash|shell|python|powershell)\b|\bquer(y|ies)\b.{0,60}\btable\b", 1.0),
    Rule(r"\(\?[=!:<]|\\[dwsb][+*?]?|\[(a-z|0-9|a-za-z|\^)", 1.5),  # regex syntax, not maths
    # code-shaped text: a call with no arguments, a method call, JS/C operators, a file with a code
    # extension; none of these is maths notation
    Rule(r"\b[a-z_]\w+\(\)|\b[a-z_]\w*\.[a-z_]\w*\(|===|!==|=>|&&|\|\||\+\+|\+=|::|\{\s*\n", 1.0),
    Rule(r"\w\.(py|js|ts|tsx|jsx|java|cpp|rs|go|rb|php|sh|yml|yaml|toml|ini|env|bashrc|gitignore)\b", 1.0),
    # French, Spanish, German: the words of a software question
    Rule(
        r"\b(bucle|boucle|schleife|función|fonction|funktion|código|erreur|fehlermeldung|programme|"
        r"programa|programm|skript|base de données|base de datos|datenbank|requête|variable)\b",
        0.75,
    ),
    Rule(r"\bcode of conduct\b|\bdress code\b|\bzip code\b|\bpostal code\b|\bpin codes?\b", -1.5),
)

MATH_RULES = (
    Rule(r"\b(derivative|antiderivative|integral|differentiate|d/dx|dy/dx)\b|∫|∑|√", 2.0),
    Rule(r"\b(eigen(value|vector)s?|determinant|polynomial|quadratic|logarithm|factorial)\b", 1.5),
    Rule(r"\b(equations?|inequalit(y|ies)|theorem|proof(?!-?read)|prove that|lemma|axiom)\b", 1.0),
    Rule(r"\b(probability|standard deviation|variance|median|expected value|binomial|poisson)\b", 1.0),
    Rule(r"\b(confidence interval|p-value|z-score|t-test|chi-square|hypothesis test|bayes)\b", 1.5),
    Rule(r"\b(hypotenuse|triangle|circumference|radius|perimeter|area of|volume of|angles?)\b", 1.0),
    Rule(r"\b(polyhedr\w*|polygon|vertices|sphere|cylinder|cone|hexagon|octagon|parallelogram)\b", 1.0),
    Rule(r"\b[fgh]\s*\(\s*[a-z]\s*\)\s*=", 1.5),
    Rule(r"\b(sin|cos|tan|log|ln|exp)\s*\(|\b[a-z]\s*\^\s*\d|\b\d+\s*[x×*/÷^]\s*\d+|\d\s*[+-]\s*\d", 1.0),
    Rule(r"\bsolve for [a-z]\b|\b\d*[a-z]\s*[+-]\s*\d+\s*=|\b[a-z]\s*=\s*-?\d", 1.5),
    # arithmetic asked outright: "12 * 17 = ?", "15% of 240", "what's 7 times 8", a bare expression
    Rule(r"\d\s*[-+*/×÷^]\s*\d[^a-z\n]*=\s*\?|\b\d+(\.\d+)?\s*(%|percent) of \d", 2.0),
    Rule(r"^[\d\s.,()]*\d\s*[-+*/×÷^]\s*[\d(][\d\s.,()+\-*/×÷^=?]*$", 2.0),  # a bare expression
    Rule(r"\b(what('s| is)|how much is) -?\d+(\.\d+)? *(times|plus|minus|divided by|squared|cubed)\b", 2.0),
    Rule(r"\b(calculate|compute|simplify|evaluate|factori[sz]e|solve)\b", 0.5),
    Rule(r"\b(percent(age)?|fraction|ratio|interest rate|compound interest|average speed)\b|\d\s*%", 0.75),
    Rule(r"\b(integer|prime|divisible|modulo|matrix|vector|limit of|series|sequence|converge)\w*\b", 0.5),
    Rule(r"\b(odds|chance|mean|average|how many ways|at least one|diagonals?|lim|dx|mod)\b|[π°²³]", 0.5),
    Rule(r"\b(homework|word problem|formula)\b", 0.5),
    # French, Spanish, German
    Rule(
        r"\b(dérivée|intégrale|équation|calcule[rz]?|probabilité|pourcentage|aire d|ecuación|derivada|"
        r"calcula|probabilidad|porcentaje|por ciento|raíz cuadrada|teorema|resuelve|résous|berechne|"
        r"gleichung|ableitung|wahrscheinlichkeit|prozent|flächeninhalt|möglichkeiten|löse)\b",
        1.5,
    ),
    Rule(r"\b(integrate|integration) (with|into)\b|\bregression tests?\b|\bsequence diagram\b", -1.5),
)

WRITING_RULES = (
    Rule(
        r"\b(write|draft|compose|pen|craft)\b.{0,40}\b(poem|story|essay|letter|e-?mail|haiku|limerick|"
        r"sonnet|speech|toast|eulogy|blog post|tweet|caption|slogan|tagline|lyrics|song|bio|obituary|"
        r"newsletter|press release|cover letter|invitation|apology|thank[- ]you note|review|ad copy|"
        r"message|text|note|reply|vows|verse|rap|riddle|scene|dialogue|monologue|headline|blurb|"
        r"description|listing|announcement|card|post|mystery|tale|fiction|thriller|play|script for)\b",
        2.0,
    ),
    Rule(r"\b(poem|haiku|sonnet|limerick|stanza|rhym\w*|verse|short story|fairy tale|fable)\b", 1.5),
    Rule(r"\b(proof-?read|paraphrase|reword|rephrase|copyedit|line edit|tone down)\b", 1.5),
    Rule(r"\b(more|less) (formal|casual|polite|concise|persuasive|friendly|professional)\b", 1.5),
    Rule(
        r"\b(rewrite|edit|tighten|polish|shorten) (this|it|my|the following)\b"
        r"|\bsound(s|ing)? (more|less|too|like)\b|\b(fix|correct|check) (the |my )?(grammar|spelling|"
        r"punctuation|english)\b|\bmy tone\b|\b(passive|active) voice\b|\b(edit|rewrite|revise) for "
        r"(clarity|concision|tone|flow|style|length)\b",
        1.5,
    ),
    Rule(r"\b(grammar|punctuation|wording|cover letter|blog post|essay|paragraph|headline|tagline)\b", 1.0),
    Rule(r"\b(summari[sz]e|tl;?dr|condense|shorten) (this|the following|these|it|my)\b", 1.5),
    Rule(r"\b(story|novel|character|plot twist|dialogue|narrator|chapter|protagonist)\b", 0.75),
    Rule(r"\b(email|letter|speech|toast|caption|slogan|lyrics)\b", 0.5),
    Rule(r"\b(sentence|semicolon|colon|synonym|opening line|thesis statement|villain|tweet|vows)\b", 0.75),
    # French, Spanish, German: write/draft + a text, rewrite, correct, summarise
    Rule(
        r"\b(écri[st]|rédige[rz]?|escribe|escríbeme|redacta|hazme|schreib\w*|verfasse)\b.{0,40}\b(poème|"
        r"lettre|histoire|conte|e-?mail|courriel|message|discours|poema|cuento|carta|correo|historia|"
        r"mensaje|discurso|gedicht|geschichte|brief|text|rede|nachricht)",
        2.0,
    ),
    Rule(
        r"\b(reformule\w*|reformula\w*|umformulier\w*|formulier\w*|reescrib\w*|corrige[rz]? (les fautes|la "
        r"gramática|l'orthographe|ce texte|este texto)|korrigier\w*|résume[rz]? ce|resume este|resúme\w*|"
        r"fasse? .{0,30}zusammen)\b",
        2.0,
    ),
    Rule(r"\b(poème|poema|gedicht|cuento|fábula)\b", 1.0),
)

GENERAL_RULES = (
    Rule(r"\b(recipe|weather|vacation|travel|restaurant|workout|sleep|houseplant|gardening)\b", 0.75),
    Rule(r"\b(capital of|population of|who (was|invented|discovered|painted)|when did|history of)\b", 0.75),
)


def default_router(name: str = "auto") -> Router:
    """The built-in ``auto`` router; ``general`` is its default route."""
    return Router(
        name=name,
        routes=(
            Route(
                "code",
                "Programming: writing, explaining, reviewing or debugging code; SQL, shell, tooling.",
                CODE_EXAMPLES,
                CODE_RULES,
                ("qwen2.5-coder:7b", "qwen2.5-coder:1.5b", BUNDLED),
            ),
            Route(
                "math",
                "Mathematics: arithmetic, algebra, calculus, probability, statistics, proofs, word problems.",
                MATH_EXAMPLES,
                MATH_RULES,
                ("qwen2-math:7b", "qwen2-math:1.5b", BUNDLED),
            ),
            Route(
                "writing",
                "Writing: emails, stories, poems, essays; editing, rewriting and summarising given text.",
                WRITING_EXAMPLES,
                WRITING_RULES,
                ("llama3.1:8b", "llama3.2:3b", BUNDLED),
            ),
            Route(
                "general",
                "Everything else: facts, advice, explanations, recommendations and conversation.",
                GENERAL_EXAMPLES,
                GENERAL_RULES,
                ("llama3.2:3b", BUNDLED),
            ),
        ),
        default_route="general",
        abstain_examples=ABSTAIN_EXAMPLES,
        # head_weight: the middle of a plateau (0.1-0.3) on the dev splits of bench/routing.py; the
        # labelled default prompts have at most 4 words
        abstain_max_words=6,
        head_weight=0.2,
    )


def resolve_router(name: str, tables: Mapping[str, Any] | None = None) -> Router:
    """Router ``name``: ``auto`` is the built-in router, changed by a ``[routers.auto]`` table if
    ``tables`` (the config file's ``routers`` table) has one; any other name needs its own table.

    Raises InvalidRequest naming the routers there are.
    """
    tables = tables or {}
    table = tables.get(name)
    if name == "auto":
        return router_from_table(name, table, default_router()) if table else default_router()
    if table is None:
        known = ", ".join(sorted({"auto", *tables}))
        raise InvalidRequest(f"no router named {name!r} (routers: {known})")
    return router_from_table(name, table)
