"""Command line: a thin layer over the Python API in vaebench.api."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import VaebenchError


class _Group(click.Group):
    """Turns a user's mistake into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VaebenchError as e:
            click.echo(f"vaebench: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("vaebench: interrupted; run the same command again to resume", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vaebench")
def cli() -> None:
    """Ablation studies of VAEs on binarized MNIST."""


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=500 (repeatable).")
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Results folder; each run writes results/<name>/<id>/.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Redo runs that are already done.")
def run(config: str, overrides: tuple[str, ...], out: str, device: str, force: bool) -> None:
    """Train the runs CONFIG describes; rerunning resumes or skips finished runs."""
    from .api import run as api_run

    result = api_run(config, out=out, overrides=list(overrides), device=device, force=force)
    _report(result)


def _report(result) -> None:
    final = result.final or {}
    val = final.get("val")
    tail = f"  final val ELBO {val['elbo']:.2f} (rec {val['rec']:.2f}, KL {val['kl']:.2f})" if val else ""
    click.echo(f"{result.state:8s} {result.path}  step {result.step}{tail}")
    if result.state == "failed":
        click.echo(f"vaebench: run failed: {result.reason} (see {result.path}/status.json)", err=True)
        sys.exit(1)


def main() -> None:
    cli(prog_name="vaebench")


if __name__ == "__main__":
    main()
