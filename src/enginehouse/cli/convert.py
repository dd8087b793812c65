"""``enginehouse convert``: a Hugging Face model to a GGUF model in the store, with llama.cpp's converter."""

from __future__ import annotations

import click
from rich.console import Console

from enginehouse.cli.models import human_size, open_store
from enginehouse.cli.progress import Reporter
from enginehouse.config import Config
from enginehouse.engines.convert_hf import OUTTYPES, convert_hf


@click.command()
@click.argument("source")
@click.argument("name")
@click.option(
    "--outtype",
    type=click.Choice(OUTTYPES),
    default="auto",
    show_default=True,
    help="Weight type of the GGUF; auto: f16, or bf16 for bf16 weights (the converter's choice).",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow a model that ships code (*.py, auto_map): the converter's tokenizer loading runs it.",
)
@click.pass_obj
def convert(config: Config, source: str, name: str, outtype: str, trust_remote_code: bool) -> None:
    """Convert a Hugging Face model to GGUF and create model NAME from it.

    SOURCE is a local directory (config.json + *.safetensors + tokenizer files) or hf.co/owner/repo[@commit]
    for a repository pulled whole into the store. Needs `enginehouse engines install converter` first
    (llama.cpp's convert_hf_to_gguf.py from the pinned source, in a venv with torch and transformers).
    """

    label = f"Converting {source}"
    with Reporter(width=0) as progress:
        progress.update("convert", 0, None, label=label)

        def log(line: str) -> None:
            if line.startswith(("INFO:hf-to-gguf:gguf:", "converting ", "converted ", "writing manifest")):
                progress.note(line, style="dim")
            progress.update("convert", 0, None, label=label, detail=line)

        record = convert_hf(
            config,
            open_store(config),
            source,
            name,
            outtype=outtype,
            trust_remote_code=trust_remote_code,
            log=log,
        )
        progress.update("convert", 1, 1)
    made = f"created {record.name.display} ({human_size(record.size)}, {record.manifest_digest[:19]})"
    Console(stderr=True, soft_wrap=True).print(made, markup=False, highlight=False)


COMMANDS = (convert,)
