SELECT MAX(income) > MAX(age) AS richer FROM bank.customers
