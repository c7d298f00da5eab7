SELECT b.kind, COUNT(*) AS n, SUM(b.staff) AS s FROM alpha.ta2 JOIN alpha.branches b ON ta2.branch_id = b.branch_id GROUP BY b.kind
