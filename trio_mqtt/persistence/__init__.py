"""Persistence: keeping sessions and retained messages across restarts.

It sits beside the sans-IO core, not inside it: the core records what changed (only while
a store is attached, ``BrokerCore.records_changes``) and offers ``restore_session`` and
``restore_retained`` for loading; a backend reads the changes and writes them where it
keeps them. ``sqlite.SQLiteStore`` is the one backend today.
"""
