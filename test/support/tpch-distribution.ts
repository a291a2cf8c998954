// How the test clusters distribute the TPC-H-shaped tables: orders and lineitem hashed on the order key and
// co-located, part and partsupp on the part key, customer on its key, the edge-case tables on their ids;
// supplier, nation and region stay replicated.

export const distributionSql = [
  "SELECT parapool.distribute_table('orders', 'o_orderkey')",
  "SELECT parapool.distribute_table('lineitem', 'l_orderkey', colocate_with => 'orders')",
  "SELECT parapool.distribute_table('part', 'p_partkey')",
  "SELECT parapool.distribute_table('partsupp', 'ps_partkey', colocate_with => 'part')",
  "SELECT parapool.distribute_table('customer', 'c_custkey')",
  "SELECT parapool.distribute_table('typed_values', 'id')",
  "SELECT parapool.distribute_table('empty_table', 'id', colocate_with => 'typed_values')",
  "SELECT parapool.distribute_table('departments', 'id')",
];
