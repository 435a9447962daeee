using LiveMigration.HostNode.Storage.File;

namespace LiveMigration.Demo.Cluster;

/// <summary>
/// A host unlinks a deleted image's files after the delete answered (the source of a move is renamed to a
/// <see cref="FileStorageDomain.RemovingPrefix"/> folder in the move's last step and emptied after <c>completed</c>).
/// Whatever looks into a domain's folders after a move, or times what comes next on its disk, waits for that first: a
/// folder still being emptied is not a leftover, but one still there after the patience given is.
/// </summary>
public static class DeletedImageFolders
{
    /// <summary>Waits until no domain folder under the <paramref name="domainRoots"/> holds a deleted image's folder.</summary>
    /// <exception cref="TimeoutException">One is still there after <paramref name="patience"/>: named in the message.</exception>
    public static async Task AwaitUnlinkedAsync(TimeSpan patience, params string[] domainRoots)
    {
        var deadline = DateTime.UtcNow + patience;
        while (Remaining(domainRoots) is { Count: > 0 } left)
        {
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"deleted images not unlinked {patience.TotalSeconds:0} s after their delete: {string.Join(", ", left)}");
            await Task.Delay(10);
        }
    }

    private static List<string> Remaining(IEnumerable<string> domainRoots) =>
        domainRoots.Where(Directory.Exists)
            .SelectMany(Directory.EnumerateDirectories)
            .Select(domain => Path.Combine(domain, "images"))
            .Where(Directory.Exists)
            .SelectMany(images => Directory.EnumerateDirectories(images, FileStorageDomain.RemovingPrefix + "*"))
            .ToList();
}
