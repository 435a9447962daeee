using System.Runtime.InteropServices;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Processes;

/// <summary>
/// The unprivileged account QEMU runs as (as libvirt runs it as its <c>qemu</c> user): a guest that breaks out of
/// QEMU holds that account's rights, not root's. It gets only its own primary group (no supplementary groups, no new
/// privileges), and the host gives that group the volumes (<see cref="Storage.File.StorageModes"/>) and the socket
/// folder, nothing else. The HostNode itself stays root: it creates, deletes and fences storage.
/// </summary>
public sealed record QemuAccount(string Name, int Uid, int Gid)
{
    /// <summary>The account <c>lsm local up</c> and <c>deploy/qemu-user.sh</c> make.</summary>
    public const string DefaultName = "lsm-qemu";

    /// <summary>The account named <paramref name="name"/>, from the system's user database.</summary>
    public static QemuAccount Find(string name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Any(c => char.IsWhiteSpace(c) || char.IsControl(c) || c == ':'))
            throw new ArgumentException($"--qemu-user '{name}' is not a user name");
        var entry = OperatingSystem.IsLinux() ? GetPasswordEntry(name) : IntPtr.Zero;
        if (entry == IntPtr.Zero)
            throw new ArgumentException($"--qemu-user: there is no user '{name}' on this host; make it with deploy/qemu-user.sh " +
                                        $"(a system account with its own group and no login), or leave --qemu-user out to run QEMU as this host's user");
        // struct passwd on 64-bit Linux: char *pw_name, char *pw_passwd, uid_t pw_uid, gid_t pw_gid, ...
        var uid = Marshal.ReadInt32(entry, 2 * IntPtr.Size);
        var gid = Marshal.ReadInt32(entry, 2 * IntPtr.Size + sizeof(int));
        if (uid == 0)
            throw new ArgumentException($"--qemu-user '{name}' is root (uid 0): QEMU would run with every right on this host; name an unprivileged account");
        return new QemuAccount(name, uid, gid);
    }

    /// <summary>The command line that runs <paramref name="program"/> as this account: setpriv execs it, so the pid stays QEMU's.</summary>
    public (string Program, IReadOnlyList<string> Arguments) Wrap(string program, IEnumerable<string> arguments) =>
        ("setpriv", ["--reuid", Uid.ToString(), "--regid", Gid.ToString(), "--clear-groups", "--no-new-privs", "--", program, .. arguments]);

    /// <summary>
    /// Null when this account can read and write every file in <paramref name="files"/>; else the first file it cannot,
    /// with the topmost folder above it that it cannot pass through (the one to open up), so QEMU's own
    /// "Permission denied" never has to be decoded.
    /// </summary>
    public async Task<string?> FirstUnreachableAsync(IReadOnlyList<string> files, CancellationToken ct)
    {
        if (files.Count == 0) return null;
        const string script =
            "for f; do if [ ! -r \"$f\" ] || [ ! -w \"$f\" ]; then " +
            "d=$f; blocked=''; while [ \"$d\" != / ]; do d=$(dirname \"$d\"); [ -x \"$d\" ] || blocked=$d; done; " +
            "echo \"$f|$blocked\"; exit 1; fi; done";
        var (program, arguments) = Wrap("/bin/sh", ["-c", script, "sh", .. files]);
        var result = await ProcessRunner.RunAsync(program, arguments, ct);
        if (result.Succeeded) return null;
        var answer = result.StandardOutput.Trim().Split('|');
        if (answer.Length != 2)
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot check what QEMU's account {Name} may open: {result.StandardError.Trim()}");
        return answer[1].Length > 0
            ? $"{answer[0]} (QEMU's account {Name} cannot pass through the folder {answer[1]})"
            : $"{answer[0]} (QEMU's account {Name} may not read and write it)";
    }

    [DllImport("libc", EntryPoint = "getpwnam", SetLastError = true)]
    private static extern IntPtr GetPasswordEntry([MarshalAs(UnmanagedType.LPUTF8Str)] string name);
}
