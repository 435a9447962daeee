using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor;

/// <summary>
/// Where a host's QMP and NBD unix sockets live: a 0700 folder only this host's user can enter, since whoever connects
/// to a QMP socket commands the VM and whoever connects to an NBD export reads and writes its disk. A socket path has
/// at most 107 bytes, so a deep run directory cannot hold them; its stand-in is a folder per run directory under a
/// directory no other user can write (<c>/run/lsm</c> for root, else <c>$XDG_RUNTIME_DIR</c>), never a predictable
/// path in the shared <c>/tmp</c>, where another user could create it first or plant a symlink.
/// </summary>
public static class SocketDirectory
{
    /// <summary>Run directories shorter than this keep their sockets inside (<c>RUN/s</c>): the paths stay under the limit.</summary>
    private const int MaxInlineRunDirectoryLength = 60;

    public const UnixFileMode Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    /// <summary>
    /// The socket folder for <paramref name="runDirectory"/> (absolute); the same on every start, so a restarted host finds
    /// it. QEMU running as its own account (<paramref name="qemu"/>) makes its sockets itself, so their folder is always
    /// under <see cref="SharedParent"/>, which that account can reach whatever folders hold the run directory.
    /// </summary>
    public static string For(string runDirectory, Processes.QemuAccount? qemu = null)
    {
        if (runDirectory.Length < MaxInlineRunDirectoryLength && qemu is null) return Path.Combine(runDirectory, "s");
        return Shared.Hosting.SocketFolders.StandIn(runDirectory);
    }

    /// <summary>
    /// Creates the folder (and <c>/run/lsm</c>) as 0700, or makes an existing one 0700; refuses a symlink in its place,
    /// which would send the sockets wherever it points.
    /// </summary>
    public static void Ensure(string directory, Processes.QemuAccount? qemu = null)
    {
        if (Path.GetDirectoryName(directory) == SharedParent) CreateSharedParent();
        CreatePrivate(directory);
        if (qemu is null) return;
        // QEMU's account may pass through /run/lsm (0710, its group) to its own folder (0700, its own), and nowhere else.
        Storage.File.Posix.SetOwner(SharedParent, 0, qemu.Gid);
        Storage.File.StorageModes.SetMode(SharedParent, Mode | UnixFileMode.GroupExecute);
        Storage.File.Posix.SetOwner(directory, qemu.Uid, qemu.Gid);
    }

    /// <summary>Root's parent of the stand-in folders (<see cref="Shared.Hosting.SocketFolders"/>).</summary>
    public const string SharedParent = Shared.Hosting.SocketFolders.SharedParent;

    /// <summary>
    /// /run/lsm: made 0700 when missing. An existing one keeps the group pass-through (g+x) a host with a QEMU account
    /// gave it, and loses anything more: every host of this machine (several clusters, tests in parallel) shares it, and
    /// tightening it to 0700 under a running QEMU account cut that QEMU off from its own socket folder ("cannot create PID
    /// file: Permission denied").
    /// </summary>
    private static void CreateSharedParent()
    {
        if (OperatingSystem.IsWindows() || !Directory.Exists(SharedParent))
        {
            CreatePrivate(SharedParent);
            return;
        }
        if (new DirectoryInfo(SharedParent).LinkTarget is not null)
            throw new OperationFailedException(ErrorCodes.IoError, $"the socket folder {SharedParent} is a symlink; remove it (nothing of this host's is in it)");
        var current = File.GetUnixFileMode(SharedParent);
        var wanted = Mode | (current & UnixFileMode.GroupExecute);
        if (current != wanted) Storage.File.StorageModes.SetMode(SharedParent, wanted);
    }

    private static void CreatePrivate(string folder)
    {
        if (new DirectoryInfo(folder).LinkTarget is not null)
            throw new OperationFailedException(ErrorCodes.IoError, $"the socket folder {folder} is a symlink; remove it (nothing of this host's is in it)");
        try
        {
            Storage.File.StorageModes.CreatePrivateFolder(folder, Mode);
            Storage.File.StorageModes.SetMode(folder, Mode);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new OperationFailedException(ErrorCodes.IoError,
                $"cannot make the socket folder {folder} ({e.Message}): run the host as root, set XDG_RUNTIME_DIR, or use a run directory " +
                $"shorter than {MaxInlineRunDirectoryLength} characters (a unix socket path has at most 107 bytes)");
        }
    }
}
