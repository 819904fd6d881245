"""What N and C mean in a fit: the three counting conventions the report shows side by side.

The compute-optimal exponent a (N_opt ~ C^a) depends on what is counted. Kaplan et al. 2020
(arXiv:2001.08361) use non-embedding parameters and C = 6ND; counting the output layer and
attention as well, at the small sizes a cheap sweep trains, moves a by as much as the
Kaplan/Chinchilla gap (Porian et al. 2024, arXiv:2406.19146; Pearce & Song 2024,
arXiv:2406.12907). Each convention names a parameter column and a compute column of
results.csv; lm.model.flops defines the compute columns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Convention:
    key: str  # fit.json key
    n_col: str  # results.csv column with the parameter count
    c_col: str  # results.csv column with the compute
    title: str

    @property
    def tag(self) -> str:
        """The roman numeral, "(i)", that prefixes the title."""
        return self.title.split(" ")[0]


CONVENTIONS = (
    Convention("non_embedding_C_6N", "N", "C_6N", "(i) non-embedding N, C = 6ND (Kaplan)"),
    Convention(
        "total_C_6N_out", "N_total", "C_6N_out", "(ii) total N, C_6N_out (output layer counted)"
    ),
    Convention(
        "non_embedding_out_C_6N_out_attn",
        "N_out",
        "C_6N_out_attn",
        "(iii) non-embedding + output-layer N, C_6N_out_attn (Porian)",
    ),
)

DEFAULT_FLOPS_CONVENTION = "6N"


def primary_convention(info: dict) -> tuple[Convention, str | None]:
    """The convention the sweep was planned in (its C column is C_<flops_convention>), which
    the summary, the checks and the opening paragraph report; (i) with a note when the sweep
    counted FLOPs in a way none of the three uses."""
    fc = str(info.get("flops_convention", DEFAULT_FLOPS_CONVENTION))
    for c in CONVENTIONS:
        if c.c_col == f"C_{fc}":
            return c, None
    first = CONVENTIONS[0]
    return first, (
        f"the sweep counted FLOPs with `{fc}`, which none of the report's conventions uses: "
        f"the primary convention is {first.tag}, and on an isoflop sweep its IsoFLOP sets are "
        f"interpolated like the other conventions' (the budgets hold C_{fc} fixed, not "
        f"{first.c_col})"
    )


def n_column_for(flops_convention: str) -> str:
    """The results.csv column holding the N a sweep counts with `flops_convention` (as
    lm.scaling.sweep.params_for does: the N its learning-rate rule is a function of)."""
    if flops_convention in ("6N", "6N_attn"):
        return "N"
    if flops_convention == "chinchilla":
        return "N_total"
    return "N_out"
