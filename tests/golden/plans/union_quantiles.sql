SELECT g, MIN(x) AS lo, MEDIAN(x) AS m, VAR_POP(x) AS v FROM (SELECT region AS g, age AS x FROM bank.customers UNION ALL SELECT segment, monthly_txn_count FROM payments.accounts) u GROUP BY g
