"""``rayemb generate | train | finetune``: the training commands.

Owns: registering the training commands with the parser (their arguments and runs live in ``training/``).
"""

from __future__ import annotations

__all__ = ["add_parsers"]


def add_parsers(sub, formatter) -> None:
    from ..training import finetune, generate, train

    for name, module, text in (("generate", generate, "render a cached training set of DRRs"),
                               ("train", train, "train the ray-embedding network"),
                               ("finetune", finetune, "patient-specific self-supervised fine-tuning")):
        p = sub.add_parser(name, help=text, formatter_class=formatter, description=text + ".")
        getattr(module, f"add_{name}_args")(p)
        p.set_defaults(func=getattr(module, f"{name}_main"))
