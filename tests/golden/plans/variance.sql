SELECT region, VAR_SAMP(income) AS v, STDDEV_POP(age) AS s, AVG(income) AS a FROM bank.customers GROUP BY region
