namespace LiveMigration.HostNode.Storage.File;

/// <summary>
/// The permissions of what a file domain holds: guest disks and their metadata are readable and writable by the owner
/// and the group QEMU runs in (0660), folders enterable by that group only (0750), and nothing by other users, who
/// would otherwise read every guest's data. qemu-img creates its files with the process umask, so each is set
/// explicitly after it is made; the HostNode also runs with umask 007 (HostNode's Program) as a backstop.
/// </summary>
public static class StorageModes
{
    public const UnixFileMode Folder = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
                                       | UnixFileMode.GroupRead | UnixFileMode.GroupExecute;

    public const UnixFileMode File = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite;

    /// <summary>
    /// The group QEMU runs in (<see cref="Processes.QemuAccount"/>), or null when QEMU runs as the host's own user. Set once
    /// at the host's start, before any domain is opened, like the process umask: every folder and file the host makes
    /// from then on belongs to it, and folders carry the set-group-id bit so what qemu-img creates inside inherits it.
    /// </summary>
    public static int? QemuGroup { get; private set; }

    public static void UseQemuGroup(int gid) => QemuGroup = gid;

    /// <summary>
    /// Creates the folder and any missing parent with <see cref="Folder"/> (and QEMU's group); an existing folder keeps
    /// its mode and group.
    /// </summary>
    public static void CreateFolder(string path)
    {
        if (QemuGroup is not { } group)
        {
            CreatePrivateFolder(path, Folder);
            return;
        }
        var missing = MissingFolders(path);
        CreatePrivateFolder(path, Folder);
        foreach (var folder in missing) GiveToQemuGroup(folder, Folder | UnixFileMode.SetGroup, group);
    }

    /// <summary>Sets <see cref="File"/> (and QEMU's group) on a file another program (qemu-img) created with its umask.</summary>
    public static void Restrict(string path)
    {
        if (QemuGroup is { } group) GiveToQemuGroup(path, File, group);
        else SetMode(path, File);
    }

    private static void GiveToQemuGroup(string path, UnixFileMode mode, int group)
    {
        if (OperatingSystem.IsWindows()) return;
        Posix.SetGroup(path, group);
        System.IO.File.SetUnixFileMode(path, mode);
    }

    private static List<string> MissingFolders(string path)
    {
        var missing = new List<string>();
        for (var folder = Path.GetFullPath(path); folder is not null && !Directory.Exists(folder); folder = Path.GetDirectoryName(folder))
            missing.Add(folder);
        return missing;
    }

    /// <summary>
    /// Options that create a file no wider than <see cref="File"/> (modes exist on Unix only: the hosts run on Linux).
    /// The umask still narrows it: follow with <see cref="Restrict"/>.
    /// </summary>
    public static FileStreamOptions Creating(FileMode mode, FileAccess access, FileOptions options = FileOptions.None, int bufferSize = 4096)
    {
        var created = new FileStreamOptions { Mode = mode, Access = access, Share = FileShare.None, Options = options, BufferSize = bufferSize };
        if (!OperatingSystem.IsWindows()) created.UnixCreateMode = File;
        return created;
    }

    /// <summary>
    /// Creates <paramref name="path"/> and each missing parent with <paramref name="mode"/>, one by one from the top
    /// (Directory.CreateDirectory gives the mode to the last folder only); existing folders keep theirs.
    /// </summary>
    public static void CreatePrivateFolder(string path, UnixFileMode mode)
    {
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(path);
            return;
        }
        var missing = new Stack<string>();
        for (var folder = Path.GetFullPath(path); folder is not null && !Directory.Exists(folder); folder = Path.GetDirectoryName(folder))
            missing.Push(folder);
        while (missing.TryPop(out var folder)) Directory.CreateDirectory(folder, mode);
    }

    /// <summary>Sets a file's or folder's mode (nothing on Windows, which has none).</summary>
    public static void SetMode(string path, UnixFileMode mode)
    {
        if (!OperatingSystem.IsWindows()) System.IO.File.SetUnixFileMode(path, mode);
    }
}
