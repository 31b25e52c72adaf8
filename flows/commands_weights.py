"""CLI command of weights files: `weights convert IN OUT.safetensors` reads any weights
file distillprep accepts (a state dict, safetensors, a TorchScript archive) as data, with
the same reader `features` and the student's prior use (nothing in it runs), and writes its
tensors as safetensors, the form this project prefers."""

from __future__ import annotations

from pathlib import Path

from .cli_common import emit


def add_weights(sub) -> None:
    p = sub.add_parser("weights", help="weights files: convert to safetensors")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    c = wsub.add_parser("convert", help="read a weights file as data (state dict, "
                        "safetensors, TorchScript archive: none of its code runs) and "
                        "write its tensors as safetensors")
    c.add_argument("input", type=Path, metavar="IN", help="the weights file")
    c.add_argument("output", type=Path, metavar="OUT",
                   help="the safetensors file to write (ends in .safetensors)")
    c.add_argument("--force", action="store_true", help="replace OUT if it exists")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from distillprep.scenes.errors import ConfigError, OutputExistsError
    from distillprep.scenes.io import file_sha256
    from distillprep.teachers.foundation.weights import WeightsNotFoundError, read_state_dict
    from distillprep.teachers.tensor_files import write_tensors

    if args.output.suffix != ".safetensors":
        raise ConfigError(f"weights convert: OUT {args.output} must end in .safetensors")
    if not args.input.is_file():
        raise WeightsNotFoundError(f"weights file {args.input} does not exist")
    if args.output.exists() and not args.force:
        raise OutputExistsError(f"weights convert: {args.output} exists (--force replaces "
                                "it)")
    if args.output.resolve() == args.input.resolve():
        raise ConfigError(f"weights convert: OUT is IN ({args.input})")
    tensors = read_state_dict(args.input)
    write_tensors(args.output, tensors)
    data = {"input": str(args.input), "input_sha256": file_sha256(args.input),
            "output": str(args.output), "output_sha256": file_sha256(args.output),
            "tensors": len(tensors),
            "parameters": sum(t.numel() for t in tensors.values())}
    emit(args, data, f"{data['input']}  sha256 {data['input_sha256']}\n"
         f"{data['output']}  sha256 {data['output_sha256']}\n"
         f"{data['tensors']} tensors, {data['parameters']:,} values")
    return 0


COMMANDS = (add_weights,)
