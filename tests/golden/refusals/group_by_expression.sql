SELECT COUNT(*) FROM bank.customers GROUP BY age + 1
