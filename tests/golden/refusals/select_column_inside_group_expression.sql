SELECT region, COUNT(*) FROM bank.customers GROUP BY UPPER(branch) || region
