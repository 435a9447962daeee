using System.Text;
using LiveMigration.Shared.Model;
using IOFile = System.IO.File;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>
/// The <c>KEY=VALUE</c> files of a file domain (<c>dom_md/metadata</c>, <c>&lt;volume&gt;.meta</c>).
/// Reads are strict (every line must be KEY=VALUE, no key twice); writes are atomic so a crash
/// leaves either the old or the new content, never a torn file.
/// </summary>
internal static class KeyValueFile
{
    /// <summary>Suffix of the temporary files an interrupted write may leave behind (removed by the leftover cleanup).</summary>
    public const string TempSuffix = ".tmp";

    public static async Task<IReadOnlyDictionary<string, string>> ReadAsync(string path, CancellationToken ct)
    {
        string text;
        try
        {
            text = await IOFile.ReadAllTextAsync(path, Encoding.UTF8, ct);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"metadata file {path} is missing", e);
        }
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        var lineNumber = 0;
        foreach (var line in text.Split('\n'))
        {
            lineNumber++;
            if (line.Length == 0) continue;
            var eq = line.IndexOf('=');
            if (eq <= 0 || !values.TryAdd(line[..eq], line[(eq + 1)..]))
                throw new OperationFailedException(ErrorCodes.IoError,
                    $"metadata file {path} line {lineNumber} is not a unique KEY=VALUE line");
        }
        return values;
    }

    /// <summary>Writes a temp file in the same folder, fsyncs it, renames it over the target, then fsyncs the folder.</summary>
    public static async Task WriteAtomicallyAsync(string path, IEnumerable<KeyValuePair<string, string>> values, CancellationToken ct) =>
        await WriteAtomicallyIfAsync(path, values, null, ct);

    /// <summary>
    /// As <see cref="WriteAtomicallyAsync"/>, but the file is replaced only if <paramref name="stillWanted"/>, asked after the
    /// new content is on disk and right before the rename, says yes; false when it said no (nothing changed). Keeps the
    /// slow part (the fsync) out of the window between a check and the replace that depends on it.
    /// </summary>
    public static async Task<bool> WriteAtomicallyIfAsync(string path, IEnumerable<KeyValuePair<string, string>> values,
        Func<Task<bool>>? stillWanted, CancellationToken ct)
    {
        var text = new StringBuilder();
        foreach (var (key, value) in values)
        {
            if (value.Contains('\n') || key.Contains('=') || key.Contains('\n'))
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"metadata value for {key} cannot be stored: '{value}'");
            text.Append(key).Append('=').Append(value).Append('\n');
        }
        var folder = Path.GetDirectoryName(path)!;
        var temp = Path.Combine(folder, $"{Path.GetFileName(path)}.{Guid.NewGuid():N}{TempSuffix}");
        try
        {
            // Never wider than 0660: the metadata names the guest's volumes and is the group's to read, nobody else's.
            await using (var stream = new FileStream(temp, StorageModes.Creating(FileMode.CreateNew, FileAccess.Write, FileOptions.Asynchronous)))
            {
                await stream.WriteAsync(Encoding.UTF8.GetBytes(text.ToString()), ct);
                stream.Flush(flushToDisk: true);
            }
            StorageModes.Restrict(temp); // the create mode went through the umask
            if (stillWanted is not null && !await stillWanted())
            {
                IOFile.Delete(temp);
                return false;
            }
            IOFile.Move(temp, path, overwrite: true);
        }
        catch
        {
            IOFile.Delete(temp);
            throw;
        }
        Posix.FsyncDirectory(folder);
        return true;
    }
}
