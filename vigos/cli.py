"""`vigos` command line: one sub-command group per area; each group lives beside its code.

Errors a user can fix (VigosError) print as one line; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys

import typer

from vigos.errors import VigosError

app = typer.Typer(
    name="vigos",
    help="ViGOS: train, evaluate and publish Qwen2.5-VL models with segment-wise on-policy self-distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _register() -> None:
    # Imported here so `vigos --help` stays fast and one broken area does not hide the others' commands.
    from vigos.config_cli import app as config_app
    from vigos.data.cli import app as data_app
    from vigos.evaluation.cli import app as eval_app
    from vigos.merge import cli as merge_cli
    from vigos.modeling.cli import app as model_app
    from vigos.publish.cli import app as publish_app
    from vigos.training.launch import train

    app.add_typer(config_app, name="config", help="Show the resolved config of a preset + overrides.")
    app.add_typer(data_app, name="data", help="Synthetic data and data prep.")
    app.add_typer(eval_app, name="eval", help="Evaluate a model (Pass@k on the benchmarks) and score responses.")
    app.add_typer(publish_app, name="publish", help="MLflow registry gate and Hugging Face Hub upload.")
    app.add_typer(model_app, name="model", help="Model utilities (tiny random Qwen2.5-VL for the demo and tests).")
    app.command("train", help="Train a ViGOS LoRA adapter (alone, under torchrun, or under deepspeed).")(train)
    app.command("merge", help="Merge a LoRA adapter into its base model, verified.")(merge_cli)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except VigosError as e:
        if _state["debug"]:
            raise
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", fg="red", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit codes
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
