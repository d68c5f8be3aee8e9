"""The usage path: stream entries to call records and ledger rows, exactly once.

One line, each step a module, called in order by `drain.process_batch`:
read (`streams`) -> parse (`parse`) -> price (`price`) -> record (`record`) -> acknowledge
(`acknowledge`). Entries that can never be charged go to the dead-letter stream
(`dead_letters` lists and replays them).
"""
