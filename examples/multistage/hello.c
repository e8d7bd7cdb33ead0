#include <stdio.h>

int main(void) {
    printf("Hello from a static binary in a scratch image!\n");
    return 0;
}
