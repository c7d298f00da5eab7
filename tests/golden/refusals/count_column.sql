SELECT COUNT(amount) FROM bank.loans
