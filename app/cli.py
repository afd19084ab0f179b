"""The `specs-local` command line.

Each command lives in `app/commands/<name>.py` as a click command called
`command`, imported only when used so that `specs-local solve` does not pay
for Textual and `specs-local tui` does not pay for the benchmark code.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from app.config import ConfigError
from app.errors import UserError
from app.openmp import set_openmp_defaults

# Before llama_cpp loads libgomp, which reads them once (see app.openmp).
set_openmp_defaults()

COMMANDS = {
    "solve": "Solve one question with SPECS or a baseline, streaming the steps.",
    "tui": "Open the interactive terminal app (the default with no command).",
    "replay": "Play a saved trace in the terminal app.",
    "download": "Download the models of presets, or any GGUF file from the Hub.",
    "models": "List presets and models, with what is present and where.",
    "doctor": "Check the llama.cpp build, the hardware and what each preset needs.",
    "bench": "Run methods side by side on a dataset: accuracy and latency.",
    "calibrate": "Sweep beta and the thresholds and save the chosen settings.",
    "train-head": "Train a value head (a reward read off the target's hidden states) for a preset.",
    "serve": "Serve the search as OpenAI-compatible models over HTTP (/v1/chat/completions).",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"app.commands.{name.replace('-', '_')}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v",
    "--verbose",
    count=True,
    envvar="SPECS_LOCAL_VERBOSE",
    help="More log output on stderr (-vv: llama.cpp's too).",
)
@click.version_option(package_name="specs-local")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """specs-local: a small draft model proposes reasoning steps, a larger target
    model and a reward model judge them, and SPECS keeps the best; when no draft
    is good enough the step is deferred to the target.

    \b
    Examples:
      specs-local                                   # the interactive app
      specs-local solve "What is 12 + 30?" --preset cpu-dev
      specs-local download cpu-dev --dry-run
      specs-local bench --dataset gsm8k.jsonl --methods specs,beam,greedy --limit 30
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("llama.cpp").setLevel(logging.ERROR if verbose < 2 else logging.DEBUG)
    # huggingface_hub logs through its own stderr handler already.
    logging.getLogger("huggingface_hub").propagate = False
    if ctx.invoked_subcommand is None:
        app_command = cli.get_command(ctx, "tui")
        assert app_command is not None, "tui is one of COMMANDS"
        ctx.invoke(app_command)


def main(argv: list[str] | None = None) -> int:
    from engines.base import EngineError

    try:
        # Without standalone mode click returns a command's exit code instead
        # of calling sys.exit.
        returned = cli.main(args=argv, prog_name="specs-local", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2 if exc.exit_code == 1 else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (UserError, ConfigError, EngineError) as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    return returned if isinstance(returned, int) else 0


if __name__ == "__main__":
    sys.exit(main())
