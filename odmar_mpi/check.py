"""`python -m odmar_mpi.check CONFIG --ranks N`: validate a config without MPI and print it resolved."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import click

from odmar_mpi.config import Config, ConfigError, load_config, to_toml, validate
from odmar_mpi.config import explain as explain_settings
from odmar_mpi.memory import available_memory, check_fits, estimate_for_config, format_memory


@click.command(epilog="\b\nExamples:\n  python -m odmar_mpi.check configs/odmar_beta0.01.toml --ranks 5\n"
                      "  python -m odmar_mpi.check configs/quick.toml --ranks 4 --set comm.topology=star",
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ranks", type=click.IntRange(min=1), default=8, show_default=True,
              help="Number of MPI ranks (agents) the run will use.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one value; repeatable.")
@click.option("--ranks-per-node", type=click.IntRange(min=1),
              help="Ranks that will share one machine's memory [default: all of them].")
@click.option("--node-memory", type=click.FloatRange(min=0, min_open=True), metavar="GB",
              help="Memory of one compute node in GB [default: what this machine has available].")
@click.option("--explain", is_flag=True, help="Print every setting (default, unit, allowed values, meaning) and exit.")
def main(config: Path | None, ranks: int, overrides: tuple[str, ...], ranks_per_node: int | None,
         node_memory: float | None, explain: bool) -> None:
    """Check CONFIG (default: the built-in default) as `odmar_mpi.run` would with RANKS ranks.

    Prints the resolved config as TOML (and the memory estimate on stderr) and exits 0, or prints what
    is wrong and exits 2. The estimate is checked against one node's memory: this machine's unless
    --node-memory says otherwise (on a login node, give the compute nodes').
    """
    if explain:
        click.echo(explain_settings())
        return
    try:
        cfg = load_config(config, overrides)
        validate(cfg, ranks)
        if ":" in cfg.env.world:
            api_test(cfg, ranks)
    except ConfigError as err:
        click.echo(f"odmar_mpi.check: error: {err}", err=True)
        sys.exit(2)
    if cfg.run.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            click.echo('odmar_mpi.check: error: run.device = "cuda" but this machine has no CUDA device; check on a '
                       'GPU node (the ranks will refuse the same way there if they see none), or set run.device = '
                       '"auto".', err=True)
            sys.exit(2)
    estimate = estimate_for_config(cfg, ranks)
    per_node = min(ranks_per_node or ranks, ranks)
    node_bytes = int(node_memory * 1e9) if node_memory else available_memory()
    click.echo(format_memory(estimate, per_node, node_bytes), err=True)
    problem = check_fits(estimate, per_node, node_bytes)
    if problem:
        click.echo(f"odmar_mpi.check: error: {problem}", err=True)
        sys.exit(2)
    click.echo(f"# {config or 'built-in default'}: valid for {ranks} ranks")
    click.echo(to_toml(cfg))


def api_test(cfg: Config, ranks: int) -> None:
    """Run PettingZoo's parallel_api_test on a world of your own ("package.module:factory") once, with `ranks`
    agents; ConfigError naming what it found."""
    from pettingzoo.test import parallel_api_test

    from env.coupled import make_coupled_env
    from odmar_mpi.worlds import world_options

    env = make_coupled_env(cfg.env.world, ranks, cfg.env.episode_length, **world_options(cfg))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its verdict; check's stdout is the config
            parallel_api_test(env, num_cycles=100)
    except Exception as err:  # the test reports with assertions and the world's own exceptions
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"env.world = {cfg.env.world!r} fails PettingZoo's parallel_api_test: {detail}; every "
                          "rank steps a copy of it, so it must follow the ParallelEnv API") from None


if __name__ == "__main__":
    main()
