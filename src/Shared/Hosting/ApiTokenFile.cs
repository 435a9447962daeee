using System.Security.Cryptography;

namespace LiveMigration.Shared.Hosting;

/// <summary>
/// The Coordinator's API token kept in a file readable by its owner only (0600): how the Coordinator and <c>lsm</c> get
/// it without putting it on a command line, where every user of the machine reads it in <c>/proc/PID/cmdline</c>.
/// </summary>
public static class ApiTokenFile
{
    /// <summary>Under a local cluster's data directory (<c>lsm local up</c> makes it).</summary>
    public const string FileName = "api-token";

    /// <summary>The viewer's token beside it (<c>lsm local up</c> makes it too): reads only, for dashboards and monitoring.</summary>
    public const string ViewerFileName = "viewer-token";

    public const UnixFileMode Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>
    /// The token in <paramref name="path"/>; an <see cref="ArgumentException"/> when the file is missing, empty, or
    /// readable by its group or other users (then it is no secret: chmod 600).
    /// </summary>
    public static string Read(string path)
    {
        if (!File.Exists(path))
            throw new ArgumentException($"the API token file {path} does not exist");
        if (!OperatingSystem.IsWindows() && (File.GetUnixFileMode(path) & OwnerOnly.OthersOrGroup) != 0)
            throw new ArgumentException($"the API token file {path} is readable by other users: make it its owner's only (chmod 600 {path})");
        var token = File.ReadAllText(path).Trim();
        if (token.Length == 0 || token.Any(char.IsWhiteSpace))
            throw new ArgumentException($"the API token file {path} must hold the token alone, on one line");
        return token;
    }

    /// <summary>The token in <paramref name="path"/>, made first (256 random bits, created 0600) when the file does not exist.</summary>
    public static string ReadOrCreate(string path)
    {
        if (File.Exists(path)) return Read(path);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var token = Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)).TrimEnd('=').Replace('+', '-').Replace('/', '_');
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = Mode;
        using (var file = new StreamWriter(path, options)) file.WriteLine(token);
        return token;
    }
}
