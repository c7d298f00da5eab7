SELECT amount FROM bank.loans
