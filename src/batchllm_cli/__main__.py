"""`python -m batchllm_cli` is the `batchllm` command."""

from batchllm_cli.cli.app import main

main()
