/* The pod sandbox's init process ("pause"): holds the pod's namespaces, reaps orphans, and
 * exits on TERM/INT. Built statically by hack/image, so its image is one file and no libc. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction term = {0}, child = {0};
    term.sa_handler = on_term;
    sigaction(SIGTERM, &term, 0);
    sigaction(SIGINT, &term, 0);
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &child, 0);
    for (;;) {
        pause();
    }
}
