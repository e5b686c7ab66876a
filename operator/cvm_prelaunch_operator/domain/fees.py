"""Fees the operator offers for a registration, and the ceiling the user sets over them.

Whatever the operator pays, it pays from the app owner's wallet, so every number here is bounded
by a ceiling that belongs to the user (``spec.onChain.maxFeePerGas``) or to the operator's
administrator (``MAX_FEE_PER_GAS_GWEI``, ``MAX_PRIORITY_FEE_PER_GAS_GWEI``, ``MAX_GAS_LIMIT``).

Quoting: the tip is the node's suggestion capped by the tip ceiling; the fee cap is twice the base
fee plus the tip (it survives six full blocks of base-fee increases), lowered to the ceiling when
that is still enough to be included now. When even ``base fee + tip`` is above the ceiling nothing
can be signed: the caller waits (``FeeCeilingReached``), because fees go down as well as up.

Replacing: a pending transaction is replaced with the same nonce only when both fees rise by at
least 12.5 % (geth's rule is 10 %; the margin covers rounding and stricter nodes), and the fee cap
also covers twice the current base fee plus the new tip. A replacement above the ceiling is not
signed: the transaction already out there may still be mined when the base fee falls again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from cvm_prelaunch_operator.domain.chain import Fees
from cvm_prelaunch_operator.domain.config import setting

GWEI: Final = 10**9
BUMP_NUMERATOR: Final = 9  # x 9/8 = +12.5 %
BUMP_DENOMINATOR: Final = 8
# A node without eth_maxPriorityFeePerGas (or suggesting nothing) gets this tip, within the ceiling.
FALLBACK_TIP: Final = 1 * GWEI
# Blocks a transaction may stay unmined while the base fee is above its fee cap before it is replaced.
UNDERPRICED_BLOCKS: Final = 3

_GWEI_TEXT = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")


def parse_gwei(text: str) -> int:
    """A decimal amount of gwei (up to 9 decimals: one wei) in wei."""
    value = text.strip()
    if not _GWEI_TEXT.fullmatch(value):
        raise ValueError(f"{text!r} is not an amount of gwei (digits, up to 9 decimals, e.g. 50 or 0.25)")
    try:
        return int(Decimal(value) * GWEI)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise ValueError(f"{text!r} is not an amount of gwei") from None


def format_gwei(wei: int) -> str:
    """Wei as gwei for messages: ``50``, ``0.25``, ``1.000000001``."""
    whole, rest = divmod(wei, GWEI)
    if rest == 0:
        return str(whole)
    return f"{whole}.{rest:09d}".rstrip("0")


@dataclass(frozen=True)
class FeeCeiling:
    """The most a registration may offer: per gas (fee cap, tip) and in gas."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    gas_limit: int

    def describe(self) -> str:
        return (
            f"maxFeePerGas {format_gwei(self.max_fee_per_gas)} gwei, maxPriorityFeePerGas "
            f"{format_gwei(self.max_priority_fee_per_gas)} gwei, gas {self.gas_limit}"
        )


@dataclass(frozen=True)
class OverCeiling:
    """What the chain needs now and the ceiling it exceeds, in words a user can act on."""

    message: str


def _bumped(value: int) -> int:
    """value x 1.125, rounded up, and at least value + 1."""
    return max(value + 1, -(-value * BUMP_NUMERATOR // BUMP_DENOMINATOR))


def quote(
    *, base_fee: int | None, suggested_tip: int | None, gas_price: int | None, ceiling: FeeCeiling
) -> Fees | OverCeiling:
    """Fees for a new transaction, or why none fits under the ceiling."""
    if base_fee is None:
        # A chain without EIP-1559: one gas price.
        price = gas_price if gas_price is not None else 0
        if price > ceiling.max_fee_per_gas:
            return OverCeiling(
                f"the chain's gas price is {format_gwei(price)} gwei, above the ceiling maxFeePerGas "
                f"{format_gwei(ceiling.max_fee_per_gas)} gwei"
            )
        return Fees(max_fee_per_gas=price, max_priority_fee_per_gas=None)
    tip = min(suggested_tip if suggested_tip is not None else FALLBACK_TIP, ceiling.max_priority_fee_per_gas)
    needed_now = base_fee + tip
    if needed_now > ceiling.max_fee_per_gas:
        return OverCeiling(
            f"the base fee is {format_gwei(base_fee)} gwei: inclusion needs at least "
            f"{format_gwei(needed_now)} gwei per gas, above the ceiling maxFeePerGas "
            f"{format_gwei(ceiling.max_fee_per_gas)} gwei"
        )
    cap = min(2 * base_fee + tip, ceiling.max_fee_per_gas)
    return Fees(max_fee_per_gas=cap, max_priority_fee_per_gas=tip)


def replacement(
    previous: Fees, *, base_fee: int | None, suggested_tip: int | None, ceiling: FeeCeiling
) -> Fees | OverCeiling:
    """Fees for a replacement of ``previous`` (same nonce), or why it cannot be signed."""
    if previous.max_priority_fee_per_gas is None or base_fee is None:
        price = max(_bumped(previous.max_fee_per_gas), base_fee or 0)
        if price > ceiling.max_fee_per_gas:
            return OverCeiling(
                f"replacing the transaction needs a gas price of {format_gwei(price)} gwei, above the "
                f"ceiling maxFeePerGas {format_gwei(ceiling.max_fee_per_gas)} gwei"
            )
        return Fees(max_fee_per_gas=price, max_priority_fee_per_gas=None)
    suggested = min(suggested_tip or 0, ceiling.max_priority_fee_per_gas)
    tip = max(_bumped(previous.max_priority_fee_per_gas), suggested)
    if tip > ceiling.max_priority_fee_per_gas:
        return OverCeiling(
            f"replacing the transaction needs a tip of {format_gwei(tip)} gwei, above the ceiling "
            f"maxPriorityFeePerGas {format_gwei(ceiling.max_priority_fee_per_gas)} gwei"
        )
    # The least a replacement may offer: a valid bump that is also includable at today's base fee.
    floor = max(_bumped(previous.max_fee_per_gas), base_fee + tip)
    if floor > ceiling.max_fee_per_gas:
        return OverCeiling(
            f"the base fee is {format_gwei(base_fee)} gwei: a replacement needs maxFeePerGas of at least "
            f"{format_gwei(floor)} gwei, above the ceiling {format_gwei(ceiling.max_fee_per_gas)} gwei"
        )
    cap = min(max(floor, 2 * base_fee + tip), ceiling.max_fee_per_gas)
    return Fees(max_fee_per_gas=cap, max_priority_fee_per_gas=tip)


def is_valid_replacement(previous: Fees, new: Fees) -> bool:
    """Both fees at least 12.5 % above the previous version's (the rule ``replacement`` follows)."""
    if new.max_fee_per_gas < _bumped(previous.max_fee_per_gas):
        return False
    if previous.max_priority_fee_per_gas is None or new.max_priority_fee_per_gas is None:
        return previous.max_priority_fee_per_gas is None and new.max_priority_fee_per_gas is None
    return new.max_priority_fee_per_gas >= _bumped(previous.max_priority_fee_per_gas)


def priced_out(fees: Fees, base_fee: int | None) -> bool:
    """True when the base fee has risen above what the transaction may pay per gas."""
    return base_fee is not None and base_fee > fees.max_fee_per_gas


def gas_limit(estimate: int, *, margin: float, ceiling: FeeCeiling) -> int | OverCeiling:
    """Gas limit for an estimate: the estimate with a margin, within the ceiling; an estimate already
    above the ceiling is refused (a broken or hostile RPC can report anything)."""
    if estimate > ceiling.gas_limit:
        return OverCeiling(
            f"the RPC estimates {estimate} gas for addComposeHash, above the gas ceiling {ceiling.gas_limit}"
        )
    return min(ceiling.gas_limit, int(estimate * margin) + 1)


@dataclass(frozen=True)
class ChainPolicy:
    """Operator-wide limits of what a registration may do on a chain (the user's
    ``spec.onChain.maxFeePerGas`` overrides the fee cap per resource)."""

    max_fee_per_gas: int = setting(
        "MAX_FEE_PER_GAS_GWEI",
        200 * GWEI,
        "default ceiling of `maxFeePerGas` in gwei (a resource's `spec.onChain.maxFeePerGas` overrides it)",
        parse=parse_gwei,
        shown="200",
    )
    max_priority_fee_per_gas: int = setting(
        "MAX_PRIORITY_FEE_PER_GAS_GWEI",
        5 * GWEI,
        "ceiling of `maxPriorityFeePerGas` in gwei",
        parse=parse_gwei,
        shown="5",
    )
    max_gas: int = setting(
        "MAX_GAS_LIMIT", 500_000, "ceiling of the gas limit of `addComposeHash`", minimum=21_000
    )
    gas_margin: float = setting(
        "GAS_MARGIN", 1.25, "gas limit = estimate x this margin (within the gas ceiling)", minimum=1.0
    )
    allow_insecure_rpc: bool = setting(
        "ALLOW_INSECURE_RPC",
        False,
        "accept `http://` RPC URLs to non-loopback hosts (otherwise `InsecureRpcUrl`)",
    )
    log_search_blocks: int = setting(
        "LOG_SEARCH_BLOCKS",
        100_000,
        "how far back (blocks) to look for an existing `ComposeHashAdded` of a hash before sending a new one",
        minimum=0,
    )

    def ceiling(self, user_max_fee_per_gas: int | None) -> FeeCeiling:
        return FeeCeiling(
            max_fee_per_gas=user_max_fee_per_gas
            if user_max_fee_per_gas is not None
            else self.max_fee_per_gas,
            max_priority_fee_per_gas=self.max_priority_fee_per_gas,
            gas_limit=self.max_gas,
        )
