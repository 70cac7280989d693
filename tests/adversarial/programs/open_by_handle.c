/* name_to_handle_at + open_by_handle_at: an open with no path at all (section 1). Needs
 * CAP_DAC_READ_SEARCH (root). Prints OPEN <fd> <path>. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "fd_path.h"

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/etc/hostname";
    struct file_handle *fh = malloc(sizeof(*fh) + MAX_HANDLE_SZ);
    fh->handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    if (name_to_handle_at(AT_FDCWD, path, fh, &mount_id, 0)) {
        perror("name_to_handle_at");
        return 1;
    }
    int mount_fd = open("/", O_RDONLY | O_DIRECTORY);
    int fd = open_by_handle_at(mount_fd, fh, O_RDONLY);
    if (fd < 0) {
        perror("open_by_handle_at");
        return 1;
    }
    char real[4096];
    fd_path(fd, real, sizeof(real));
    printf("OPEN %d %s\n", fd, real);
    return 0;
}
