"""flowdb.jsondb: IndexedDB-style JSON documents on the flowdb engine
(API.md section 2).  This module only re-exports the public API."""
from flowdb.jsondb._db import JsonDB
from flowdb.jsondb._keyrange import KeyRange
from flowdb.jsondb._query import QueryBuilder, SortDir
from flowdb.jsondb._schema import (Index, IndexDef, IndexSchema, StoreDef, StoreSchema,
                                   object_store)
from flowdb.jsondb._transaction import Transaction, TransactionMode

__all__ = ["JsonDB", "Transaction", "TransactionMode", "QueryBuilder", "SortDir",
           "StoreSchema", "IndexSchema", "StoreDef", "IndexDef", "KeyRange",
           "object_store", "Index"]
