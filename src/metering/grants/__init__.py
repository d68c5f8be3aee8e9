"""Credit grants: promotional and trial credits that expire, drawn before purchased credits.

A grant is a positive ADJUSTMENT (`post.post_grant`, key space `grant`) and its `CreditGrant`
row, of the same id. Usage draws from a user's open grants first (`draw`): higher `priority`
first, then the earliest `expiresAt`, then the oldest grant; what they cannot cover comes from
purchased credits, which never expire. A grant is open to a charging transaction while it has
credits left, its expiry is not yet posted, and its `expiresAt` is after the transaction's start:
one instant for the whole batch, however long it runs. Draws change no amounts: `User.credits`
stays `SUM(amount)`, and a `GrantDraw` row records what each USAGE row drew from each grant.

At expiry (`expire`, from beat) one negative ADJUSTMENT keyed `expiry:<grant id>` removes what
is left, exactly once. Refunds and clawbacks never touch grants: only usage draws from them.
`audit` proves, for reconcile, that `remaining = amount - SUM(draws) - expired`.
"""
