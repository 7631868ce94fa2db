"""`vigos` command line: one sub-command group per area; each group lives beside its code.

Errors a user can fix (a VigosError, or a usage mistake typer's parser catches: an unknown command or option, a
missing or bad value) print as one `error: ...` line with exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys

import typer

from vigos.errors import VigosError, disk_error
from vigos.redact import redact

app = typer.Typer(
    name="vigos",
    help="ViGOS: train, evaluate and publish Qwen2.5-VL models with segment-wise on-policy self-distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False, "registered": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", metavar="", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _register() -> None:
    # Imported here so `vigos --help` stays fast and one broken area does not hide the others' commands.
    if _state["registered"]:
        return
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
    _state["registered"] = True


def _usage_error_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, "help was shown" errors) of the installed typer: typer >= 0.2x parses with its own bundled
    copy of click (`typer._click`), older ones with `click` itself."""
    usage: list[type] = []
    no_args: list[type] = []
    try:
        from typer._click import exceptions as bundled

        usage.append(bundled.ClickException)
        no_args += [bundled.NoArgsIsHelpError] if hasattr(bundled, "NoArgsIsHelpError") else []
    except ImportError:  # pragma: no cover - older typer
        pass
    try:
        import click.exceptions as clicks

        usage.append(clicks.ClickException)
        no_args += [clicks.NoArgsIsHelpError] if hasattr(clicks, "NoArgsIsHelpError") else []
    except ImportError:  # pragma: no cover
        pass
    return tuple(usage), tuple(no_args)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _usage_line(e: Exception, args: list[str] | None = None) -> str:
    """`error: <typer's message> (see '<command> --help')` for a usage error; a refused value is quoted in it
    (typer's own wording, e.g. "Input should be a valid integer", does not repeat what was typed)."""
    message = _one_line(e.format_message() if hasattr(e, "format_message") else str(e))
    given = _given_value(getattr(e, "param", None), args or [])
    if given is not None and repr(given) not in message:
        message = message.replace(":", f" ({given!r}):", 1) if ":" in message else f"{message} ({given!r})"
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        return f"error: {message.rstrip('.')} (see '{ctx.command_path} --help')"
    return f"error: {message}"


def _given_value(param, args: list[str]) -> str | None:
    """What the user typed for option `param` (the last occurrence wins, as in click), or None."""
    found = None
    for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
        if not opt.startswith("-"):
            continue
        for i, arg in enumerate(args):
            if arg == opt and i + 1 < len(args):
                found = args[i + 1]
            elif arg.startswith(f"{opt}="):
                found = arg[len(opt) + 1:]
    return found


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. A usage mistake or a VigosError is one `error: ...` line on stderr and exit code 2 (a
    traceback only with --debug); a bare group shows its help (exit 2, as typer does)."""
    _register()
    args = list(sys.argv[1:] if argv is None else argv)
    usage_errors, help_shown = _usage_error_types()
    debug = "--debug" in args[: args.index("--") if "--" in args else len(args)]
    _state["debug"] = False
    try:
        code = app(args=args, prog_name="vigos", standalone_mode=False)
    except help_shown:  # `vigos`, `vigos data`: typer already printed the help
        sys.exit(2)
    except VigosError as e:
        if debug or _state["debug"]:
            raise
        typer.secho(f"error: {redact(_one_line(e))}", fg="red", err=True)
        sys.exit(2)
    except OSError as e:  # a full or read-only disk met by a write no library call wraps (the file is named)
        if debug or _state["debug"] or (disk := disk_error(e)) is None:
            raise
        typer.secho(f"error: {redact(_one_line(disk))}", fg="red", err=True)
        sys.exit(2)
    except usage_errors as e:
        if debug or _state["debug"]:
            raise
        typer.secho(redact(_usage_line(e, args)), fg="red", err=True)
        sys.exit(getattr(e, "exit_code", 2) or 2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", fg="red", err=True)
        sys.exit(130)
    except typer.Exit as e:  # pragma: no cover - typer returns the code in non-standalone mode
        sys.exit(e.exit_code)
    if isinstance(code, int) and code:  # a command or `--help` that exited with a code
        sys.exit(code)


if __name__ == "__main__":
    main()
