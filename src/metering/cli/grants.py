"""`metering grant`: credits that expire, once per key; and how a balance shows its grants."""

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from metering.cli.app import app
from metering.cli.common import console, fail, in_database, print_json
from metering.cli.ledger import JSON, KEY, _sync_halts
from metering.grants import post
from metering.grants.read import Grant


@app.command()
def grant(
    user: str = typer.Argument(..., help="User id or email."),
    credits: int = typer.Option(..., help="Credits to give (> 0)."),
    expires_at: str = typer.Option(
        ..., help="When what is left expires: RFC 3339 (UTC if no offset), in the future."
    ),
    reason: str = typer.Option(..., help="Why (a promotion, a trial), for the audit trail."),
    key: str = KEY,
    priority: int = typer.Option(
        0, help=f"0 to {post.MAX_PRIORITY}: higher is drawn first, then the earliest expiry."
    ),
    as_json: bool = JSON,
) -> None:
    """Give a user credits that expire (a grant, drawn before purchased credits), once per key."""
    request = post.GrantRequest(
        credits=credits,
        expires_at=_parse_expiry(expires_at),
        reason=reason,
        key=key,
        priority=priority,
        source="cli",
    )

    async def work(session: AsyncSession) -> post.PostedGrant:
        return await post.post_grant(session, user, request)

    posted = in_database(work)
    given = posted.grant
    if as_json:
        print_json({**grant_json(given), "created": posted.created})
    elif posted.created:
        console.print(
            f"granted {given.credits:,} credits to user {given.user_id} until "
            f"{given.expires_at:%Y-%m-%d %H:%M:%S} UTC (grant {given.grant_id})"
        )
    else:
        console.print(
            f"already granted as grant {given.grant_id} ({given.credits:,} credits, "
            f"{given.remaining:,} left): nothing changed"
        )
    if posted.created:
        _sync_halts(given.user_id)


def _parse_expiry(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--expires-at {value!r} is not a time (2026-12-31T23:59:59Z)")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def grant_json(given: Grant) -> dict[str, Any]:
    """A grant as JSON: times in RFC 3339."""
    return {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in asdict(given).items()
    }


def print_grants(grants: list[Grant]) -> None:
    """The grants of a balance, in the order usage draws them."""
    if not grants:
        return
    table = Table("grant", "left", "of", "priority", "expires (UTC)", "reason", "source")
    for given in grants:
        table.add_row(
            given.grant_id,
            f"{given.remaining:,}",
            f"{given.credits:,}",
            str(given.priority),
            f"{given.expires_at:%Y-%m-%d %H:%M:%S}",
            escape(given.reason),
            given.source,
        )
    console.print(table)
