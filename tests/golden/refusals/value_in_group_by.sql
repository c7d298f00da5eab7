SELECT amount, COUNT(*) FROM bank.loans GROUP BY amount
