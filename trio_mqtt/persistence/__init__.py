"""Persistence: keeping sessions and retained messages across restarts.

It sits beside the sans-IO core, not inside it: the core notes what changed (only once
a store is attached, ``BrokerCore.record_changes``) and offers ``restore_session`` and
``restore_retained`` for loading; a backend takes the changes (``take_changes``; what it
could not write it gives back) and writes them where it keeps them.
``sqlite.SQLiteStore`` is the one backend today.
"""
