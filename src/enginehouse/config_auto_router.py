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

from enginehouse.config_routers import Route, Router, Rule, router_from_table
from enginehouse.errors import InvalidRequest

BUNDLED = "smollm2:135m"

CODE_RULES = (
    Rule(r"```", 2.0),
    Rule(r"\bdef \w+\s*\(|\bfn \w+\s*\(|\bfunc \w+\s*\(|\bfunction [a-z_]\w+\s*\(", 2.0),
    Rule(r"#include\s*<|\bpublic static void\b|\bconsole\.log\(|\bsystem\.out\.print", 2.0),
    Rule(r"(?-i:\bSELECT\b[\s\S]*\bFROM\b|\bINSERT INTO\b|\bCREATE TABLE\b|\bALTER TABLE\b)", 2.0),
    Rule(r"\btraceback \(most recent call last\)|\b\w+(error|exception)\b:|\bsegmentation fault\b", 2.0),
    Rule(r"\bstack ?trace\b|\bnull ?pointer\b|\bundefined is not\b|\bsegfault\b|\bcore dumped\b", 1.5),
    Rule(r"\b(python|javascript|typescript|golang|kotlin|php|haskell|c\+\+|c#|perl|lua|elixir)\b", 1.5),
    Rule(r"\b(rust|java|swift|ruby|scala|go)\b (code|program|function|crate|library|script|app)", 1.0),
    Rule(r"\bin (rust|java|swift|ruby|scala|go|c|r)\b[?.!]?\s*$", 1.0),
    Rule(r"\b(sql|postgres(ql)?|mysql|sqlite|mongodb|redis|graphql)\b", 1.0),
    Rule(r"\b(bash|shell|zsh|powershell) (script|command|one-liner)|\b(grep|sed|awk|chmod|curl)\b", 1.0),
    Rule(r"\b(docker(file)?|kubernetes|kubectl|nginx|terraform|ansible|systemd|cron ?job)\b", 1.0),
    Rule(r"\b(git (rebase|merge|commit|push|pull|stash|branch|reset)|merge conflict|pull request)\b", 1.5),
    Rule(r"\b(regex|regular expression|json|yaml|csv parser|api endpoint|rest api|http request)\b", 0.75),
    Rule(r"\b(react|vue|angular|django|flask|fastapi|node\.?js|npm|pip install|pandas|numpy)\b", 1.0),
    Rule(r"\b(compile[rds]?|compiler error|linker|refactor|unit tests?|pytest|jest|debug(ger|ging)?)\b", 1.0),
    Rule(r"\b(function|method|class|variable|array|loop|recursion|pointer|struct|enum|interface)\b", 0.5),
    Rule(
        r"\b(websockets?|sockets?|backend|frontend|database|runtime|mutex|thread pool|webhook|cli tool)\b",
        1.0,
    ),
    Rule(r"\b(bug|exception|stack overflow|memory leak|race condition|deadlock|async|await)\b", 0.5),
    Rule(r"\b(code|coding|script|program(ming)?|algorithm|implement|codebase|repo(sitory)?)\b", 0.5),
    Rule(r"\bcode of conduct\b|\bdress code\b|\bzip code\b|\bpostal code\b", -1.5),
)

MATH_RULES = (
    Rule(r"\b(derivative|antiderivative|integral|differentiate|d/dx|dy/dx)\b|∫|∑|√", 2.0),
    Rule(r"\b(eigen(value|vector)s?|determinant|polynomial|quadratic|logarithm|factorial)\b", 1.5),
    Rule(r"\b(equations?|inequalit(y|ies)|theorem|proof|prove that|lemma|axiom)\b", 1.0),
    Rule(r"\b(probability|standard deviation|variance|median|expected value|binomial|poisson)\b", 1.0),
    Rule(r"\b(confidence interval|p-value|z-score|t-test|chi-square|hypothesis test|bayes)\b", 1.5),
    Rule(r"\b(hypotenuse|triangle|circumference|radius|perimeter|area of|volume of|angles?)\b", 1.0),
    Rule(r"\b(polyhedr\w*|polygon|vertices|sphere|cylinder|cone|hexagon|octagon|parallelogram)\b", 1.0),
    Rule(r"\b[fgh]\s*\(\s*[a-z]\s*\)\s*=", 1.5),
    Rule(r"\b(sin|cos|tan|log|ln|exp)\s*\(|\b[a-z]\s*\^\s*\d|\b\d+\s*[x×*/÷^]\s*\d+|\d\s*[+-]\s*\d", 1.0),
    Rule(r"\bsolve for [a-z]\b|\b\d*[a-z]\s*[+-]\s*\d+\s*=|\b[a-z]\s*=\s*-?\d", 1.5),
    Rule(r"\b(calculate|compute|simplify|evaluate|factori[sz]e|solve)\b", 0.5),
    Rule(r"\b(percent(age)?|fraction|ratio|interest rate|compound interest|average speed)\b|\d\s*%", 0.75),
    Rule(r"\b(integer|prime|divisible|modulo|matrix|vector|limit of|series|sequence|converge)\w*\b", 0.5),
    Rule(r"\b(integrate|integration) (with|into)\b|\bregression tests?\b|\bsequence diagram\b", -1.5),
)

WRITING_RULES = (
    Rule(
        r"\b(write|draft|compose|pen|craft)\b.{0,40}\b(poem|story|essay|letter|e-?mail|haiku|limerick|"
        r"sonnet|speech|toast|eulogy|blog post|tweet|caption|slogan|tagline|lyrics|song|bio|obituary|"
        r"newsletter|press release|cover letter|invitation|apology|thank[- ]you note|review|ad copy)\b",
        2.0,
    ),
    Rule(r"\b(poem|haiku|sonnet|limerick|stanza|rhym\w*|verse|short story|fairy tale|fable)\b", 1.5),
    Rule(r"\b(proofread|paraphrase|reword|rephrase|copyedit|line edit|tone down)\b", 1.5),
    Rule(r"\b(more|less) (formal|casual|polite|concise|persuasive|friendly|professional)\b", 1.5),
    Rule(r"\b(grammar|punctuation|wording|cover letter|blog post|essay|paragraph|headline|tagline)\b", 1.0),
    Rule(r"\b(summari[sz]e|tl;?dr|condense|shorten) (this|the following|these|it|my)\b", 1.5),
    Rule(r"\b(story|novel|character|plot twist|dialogue|narrator|chapter|protagonist)\b", 0.75),
    Rule(r"\b(email|letter|speech|toast|caption|slogan|lyrics)\b", 0.5),
)

GENERAL_RULES = (
    Rule(r"\b(recipe|weather|vacation|travel|restaurant|workout|sleep|houseplant|gardening)\b", 0.75),
    Rule(r"\b(capital of|population of|who (was|invented|discovered|painted)|when did|history of)\b", 0.75),
)

CODE_EXAMPLES = (
    "Write a Python function that removes duplicate items from a list while keeping their order.",
    "How do I reverse a linked list in C?",
    "My JavaScript fetch call returns a pending promise instead of the data. What am I doing wrong?",
    "Fix this error: TypeError: 'NoneType' object is not subscriptable",
    "Write a SQL query that finds the second highest salary in an employees table.",
    "What does `git rebase -i HEAD~3` do?",
    "How can I make this recursive Fibonacci function faster?",
    "Write a bash script that renames every .jpeg file in a folder to .jpg.",
    "Explain the difference between a process and a thread.",
    "Convert this Java class into idiomatic Kotlin.",
    "Why does my Rust code fail with 'borrowed value does not live long enough'?",
    "Write unit tests for a function that validates email addresses.",
    "How do I read a CSV file into a pandas DataFrame and drop rows with missing values?",
    "What is the time complexity of binary search, and how do I implement it iteratively?",
    "Create a REST endpoint in Express that returns a list of users as JSON.",
    "My Docker container exits immediately after starting. How do I debug it?",
    "Write a regular expression that matches US phone numbers.",
    "Refactor this code to use a dictionary instead of a long chain of if/elif statements.",
    "How do I center a div horizontally and vertically with CSS flexbox?",
    "What's the difference between an interface and an abstract class in C#?",
    "Write a Go program that downloads several URLs concurrently.",
    "Implement a least recently used cache with get and put in O(1).",
    "My React component re-renders in an infinite loop after I call setState in useEffect.",
    "How do I undo the last commit but keep my changes?",
    "Write a shell one-liner that counts the lines of code in all Python files of a project.",
    "Explain what a segmentation fault is and how to find where it happens.",
    "Write a TypeScript type for a function that takes a callback and returns a promise.",
    "How do I set up a virtual environment and install packages from requirements.txt?",
    "Optimize this SQL query that joins orders and customers; it takes ten seconds.",
    "Write a class in Python that represents a bank account with deposit and withdraw methods.",
    "What does the 'static' keyword mean in Java?",
    "How do I parse command-line arguments in a Python script?",
    "Write a Dockerfile for a small Flask application.",
    "Why is my for loop in JavaScript printing the same value five times with setTimeout?",
    "Sort an array of objects by a date field in descending order.",
    "How do I handle a null pointer exception in my Android app?",
    "How should I structure a Python project with several packages and shared utilities?",
    "Is it better to use a message queue or direct HTTP calls between these two services?",
    "Review my database schema for an online shop: users, products, orders, order_items.",
    "How do I keep a websocket connection alive and reconnect when it drops?",
    "What's a good way to handle configuration for development, staging and production?",
    "Why does my program use 100% CPU while it waits for input?",
    "How do I write a makefile that rebuilds only the changed C files?",
    "Explain how promises and the event loop work in Node.",
    "My API returns 500 when the request body is empty. How do I validate input properly?",
    "What is the difference between a shallow copy and a deep copy of an object?",
    "How can I speed up a slow page that runs hundreds of small database queries?",
    "Write a script that backs up a folder to a zip file with today's date in the name.",
    "How do I set a breakpoint and inspect variables in VS Code?",
    "Explain how hash tables handle collisions.",
    "Write a migration that adds a non-null column with a default value.",
    "How do I share state between two components without prop drilling?",
    "What's the cleanest way to retry a failing network call with exponential backoff?",
    "How do I print a stack trace when my program crashes?",
    "Translate this Python list comprehension into a JavaScript map and filter.",
    "Set up a GitHub Actions workflow that runs the tests on every push.",
)

MATH_EXAMPLES = (
    "What is the derivative of x^3 * sin(x)?",
    "Solve the equation 3x + 7 = 22.",
    "Find the integral of 1/(1 + x^2) from 0 to 1.",
    "A train travels 240 km in 3 hours. What is its average speed in meters per second?",
    "What is the probability of rolling two sixes with two dice?",
    "Calculate the standard deviation of 4, 8, 15, 16, 23 and 42.",
    "Prove that the square root of 2 is irrational.",
    "How many ways can 5 people sit in a row?",
    "Factor the polynomial x^2 - 5x + 6.",
    "What is the limit of sin(x)/x as x approaches 0?",
    "Find the eigenvalues of the matrix [[2, 1], [1, 2]].",
    "If I invest $1000 at 5% interest compounded yearly, how much will I have after 10 years?",
    "What is the area of a circle with a radius of 7 cm?",
    "Solve the system of equations: x + y = 10 and x - y = 4.",
    "Explain how to compute a 95% confidence interval for a mean.",
    "What is 17% of 340?",
    "Is 221 a prime number?",
    "Find the sum of the geometric series 1 + 1/2 + 1/4 + ...",
    "A rectangle's length is twice its width and its perimeter is 36. Find its dimensions.",
    "What is the expected value of a fair six-sided die?",
    "Simplify (2x^2 y^3)^2 / (4 x y).",
    "How do I find the inverse of a 3x3 matrix?",
    "Convert 0.375 to a fraction in lowest terms.",
    "Use the Pythagorean theorem to find the hypotenuse of a triangle with legs 9 and 12.",
    "What is the log base 2 of 64?",
    "A bag has 4 red and 6 blue marbles. If I draw two without replacement, what is the chance both are red?",
    "Solve the differential equation dy/dx = 3y.",
    "What is the greatest common divisor of 84 and 126?",
    "Explain Bayes' theorem with a medical test example.",
    "How long does it take for an amount to double at 7% annual growth?",
    "Find the slope of the line through (2, 3) and (6, 11).",
    "What is the variance of a binomial distribution with n = 20 and p = 0.3?",
    "Compute 2^10 - 3^5.",
    "Three workers paint a fence in 6 hours. How long would two workers take?",
    "What is the Taylor series of e^x around 0?",
    "Show that the sum of the first n odd numbers is n squared.",
    "How many faces, edges and vertices does a triangular prism have?",
    "What is the surface area of a sphere with diameter 10?",
    "Convert 5 miles to kilometers and 30 degrees Celsius to Fahrenheit.",
    "If a number is divisible by both 4 and 6, must it be divisible by 24?",
    "In how many ways can I arrange the letters of the word BANANA?",
    "The average of five numbers is 12. Four of them are 10, 14, 9 and 15. What is the fifth?",
    "What is the slope-intercept form of a line with slope -2 passing through (1, 5)?",
    "Explain what a p-value of 0.03 means in a study.",
    "A price rose from $80 to $92. By what percentage did it increase?",
    "What is the formula for the volume of a cylinder, and what is it for r = 2 and h = 5?",
    "Find all real solutions of x^4 - 5x^2 + 4 = 0.",
    "Sketch the graph of y = |x - 2| + 1 and describe its vertex.",
    "How do I compute the mean and variance of a uniform distribution on [0, 10]?",
    "What is the sum of the angles in a pentagon?",
    "How long will it take two cyclists 60 km apart, riding toward each other at 12 and 18 km/h, to meet?",
    "Is the set of even integers closed under multiplication? Explain.",
    "What is 2/3 divided by 4/9?",
    "Find the minimum of f(x) = x^2 - 6x + 11.",
    "What is the number of subsets of a set with 7 elements?",
    "Write 3.6 × 10^-4 in standard form.",
)

WRITING_EXAMPLES = (
    "Write a short poem about autumn leaves.",
    "Draft an email to my landlord asking to fix the broken heater.",
    "Write a bedtime story about a dragon who is afraid of the dark.",
    "Proofread this paragraph and fix the grammar.",
    "Make this message sound more professional: hey, can u send me the report asap",
    "Write a cover letter for a junior graphic designer position.",
    "Summarize the following article in three sentences.",
    "Write a haiku about morning coffee.",
    "Help me write a toast for my sister's wedding.",
    "Rewrite this sentence so it is less wordy.",
    "Write the opening paragraph of a mystery novel set in Venice.",
    "Compose a polite message declining a job offer.",
    "Write a product description for a handmade ceramic mug.",
    "Give me a catchy slogan for a neighborhood bakery.",
    "Write a limerick about a cat who loves lasagna.",
    "Turn these bullet points into a friendly newsletter paragraph.",
    "Write a persuasive essay arguing that schools should start later.",
    "Paraphrase this paragraph in simpler words for a 10-year-old.",
    "Write a LinkedIn post announcing that I got a new job.",
    "Create a dialogue between a detective and a nervous witness.",
    "Write a thank-you note to my grandmother for the birthday gift.",
    "Suggest five titles for my blog post about minimalist living.",
    "Write song lyrics about a long road trip with friends.",
    "Edit this cover letter to make it more concise.",
    "Write a eulogy for a beloved family dog.",
    "Describe a stormy harbor at night in vivid prose.",
    "Write a short speech for a retirement party.",
    "Condense this meeting summary into a few bullet points.",
    "Write a fairy tale that teaches children about sharing.",
    "Rewrite this paragraph in the style of a noir detective story.",
    "Write an apology email to a customer whose order arrived late.",
    "Write an Instagram caption for a photo of a sunset at the beach.",
    "Give feedback on the pacing and tone of my short story.",
    "Write a sonnet about the ocean.",
    "Draft a press release announcing our app's new version.",
    "Write a character sketch of a grumpy lighthouse keeper.",
    "Give me a few title ideas for my travel memoir.",
    "Write an elevator pitch for a mobile app that helps people swap books.",
    "Write a funny monologue about assembling flat-pack furniture.",
    "Describe an abandoned amusement park at dawn.",
    "Write a villain's speech before the final battle.",
    "Write a short comedy sketch about a job interview gone wrong.",
    "Make this paragraph sound more confident for my grant application.",
    "Write a message for a farewell card for a colleague.",
    "Rewrite this dull sentence so it grabs the reader's attention.",
    "Turn my notes into a short speech for the town hall meeting.",
    "Write a postcard from a tourist on Mars to her family.",
    "Help me phrase a message asking my roommate to clean the kitchen.",
    "Write a scene where two strangers share an umbrella.",
    "Write an ad for a second-hand bicycle I want to sell.",
    "Write a bio for my author page in the third person.",
    "Summarize the text below in plain language for a newsletter.",
    "Write a free-verse poem about city lights at night.",
    "Write a letter to my future self about this year.",
)

GENERAL_EXAMPLES = (
    "What is the capital of Australia?",
    "How do I get red wine out of a carpet?",
    "Who painted the Mona Lisa?",
    "What are some good exercises for lower back pain?",
    "Why is the sky blue?",
    "What should I pack for a week-long trip to Iceland?",
    "How are you doing today?",
    "Tell me a fun fact about octopuses.",
    "How often should I water a snake plant?",
    "What's a good recipe for vegetarian chili?",
    "When did the Berlin Wall fall?",
    "How can I fall asleep faster at night?",
    "What's the difference between a crocodile and an alligator?",
    "Recommend a few classic science fiction novels.",
    "How do vaccines work?",
    "What should I consider when buying a used car?",
    "Can you explain how inflation affects savings?",
    "What is the tallest mountain in Africa?",
    "Any tips for a first job interview?",
    "How do I make my houseplants grow better in winter?",
    "What do you think about pineapple on pizza?",
    "Why do cats purr?",
    "What causes the northern lights?",
    "How do I politely tell a friend I need some space?",
    "What's the best way to learn a new language as an adult?",
    "Who was the first person to walk on the moon?",
    "What are the health benefits of green tea?",
    "How does a refrigerator keep food cold?",
    "What's the etiquette for tipping in Japan?",
    "I'm bored. What should I do this weekend?",
    "What is the difference between weather and climate?",
    "How many hours of sleep does a teenager need?",
    "What's your favorite movie?",
    "How do I start running if I have never exercised?",
    "What languages are spoken in Switzerland?",
    "Tell me something interesting about ancient Egypt.",
    "How do I negotiate a higher salary at my next review?",
    "My coworker keeps taking credit for my work. How should I handle it?",
    "What are the signs of burnout and how can I recover?",
    "Is it better to pay off debt or start saving for retirement?",
    "How do I reset my home Wi-Fi router?",
    "Why does my phone battery drain so quickly?",
    "What's the best way to clean white sneakers?",
    "How do I train my dog to stop pulling on the leash?",
    "What are the main differences between Buddhism and Hinduism?",
    "Which is the longest river in South America?",
    "How did the Roman Empire fall?",
    "What foods are high in iron?",
    "Nice to meet you! What can you help me with?",
    "Are you a human or a robot?",
    "Where should I go for a cheap beach holiday in Europe?",
    "How do solar panels generate electricity?",
    "What documents do I need to renew my passport?",
    "What are some good board games for a family night?",
    "Why do we dream?",
    "What's a good way to make new friends as an adult?",
)

# Requests that carry no task of their own: bare greetings, follow-ups that only make sense with an
# earlier turn, test messages and keyboard mash. Closest to these means "take the default route".
ABSTAIN_EXAMPLES = (
    "hello again",
    "good evening",
    "hey hey",
    "greetings",
    "keep going",
    "please continue from where you stopped",
    "tell me more",
    "and after that?",
    "what else",
    "one more time",
    "try again",
    "do the same for the next one",
    "the first option",
    "like I said before",
    "you know what I mean",
    "fix it",
    "what about this one",
    "ok so",
    "anyway",
    "whatever you think",
    "not sure",
    "jkl fdsa mnb",
    "zzzz xxxx",
    "aaaa bbbb cccc",
    "test test 123",
    "ping",
    "lorem ipsum dolor",
    "asdf asdf",
    "blah blah",
    "yes please",
    "no thanks",
    "right",
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
