using System.Threading.Channels;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Coordinator.Persistence;

/// <summary>
/// The one writer of a SQLite journal file. Rows handed to it by any number of writes are inserted in the order they
/// came, all that are waiting (up to <c>maxRowsPerCommit</c>, at least one write whole) in one transaction: one commit,
/// one sync of the write-ahead log, as the plugin's batching queue does. The insert is one prepared statement on one
/// connection for the writer's life. A batch that fails fails every write in it, and the next batch opens a new
/// connection.
/// </summary>
internal sealed class SqliteJournalWriter
{
    public sealed record Row(string PersistenceId, long SequenceNr, byte[] Message, string Manifest, int SerializerId, string? WriterUuid, long Created);

    private sealed record Pending(IReadOnlyList<Row> Rows, TaskCompletionSource Written);

    private readonly Channel<Pending> _pending = Channel.CreateUnbounded<Pending>(new UnboundedChannelOptions { SingleReader = true });
    private readonly string _connectionString;
    private readonly string _insertSql;
    private readonly int _maxRowsPerCommit;

    /// <param name="insertSql">An INSERT of one row with the parameters $id, $nr, $message, $manifest, $serializer, $writer, $created.</param>
    public SqliteJournalWriter(string connectionString, string insertSql, int maxRowsPerCommit)
    {
        _connectionString = connectionString;
        _insertSql = insertSql;
        _maxRowsPerCommit = Math.Max(1, maxRowsPerCommit);
        _ = Task.Run(WriteWhatComesAsync);
    }

    /// <summary>Completes once the rows are committed; fails when their transaction did.</summary>
    public Task WriteAsync(IReadOnlyList<Row> rows)
    {
        var pending = new Pending(rows, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        if (!_pending.Writer.TryWrite(pending))
            pending.Written.SetException(new InvalidOperationException("The journal's writer has stopped"));
        return pending.Written.Task;
    }

    /// <summary>Writes what was handed over already, then stops.</summary>
    public void Complete() => _pending.Writer.TryComplete();

    private async Task WriteWhatComesAsync()
    {
        var reader = _pending.Reader;
        var batch = new List<Pending>();
        SqliteConnection? connection = null;
        SqliteCommand? insert = null;
        try
        {
            while (await reader.WaitToReadAsync())
            {
                batch.Clear();
                var rows = 0;
                while (rows < _maxRowsPerCommit && reader.TryRead(out var next))
                {
                    batch.Add(next);
                    rows += next.Rows.Count;
                }
                try
                {
                    if (connection is null || insert is null)
                        (connection, insert) = Open();
                    using (var transaction = connection.BeginTransaction())
                    {
                        insert.Transaction = transaction;
                        foreach (var row in batch.SelectMany(p => p.Rows))
                        {
                            insert.Parameters[0].Value = row.PersistenceId;
                            insert.Parameters[1].Value = row.SequenceNr;
                            insert.Parameters[2].Value = row.Message;
                            insert.Parameters[3].Value = row.Manifest;
                            insert.Parameters[4].Value = row.SerializerId;
                            insert.Parameters[5].Value = (object?)row.WriterUuid ?? DBNull.Value;
                            insert.Parameters[6].Value = row.Created;
                            insert.ExecuteNonQuery();
                        }
                        transaction.Commit();
                    }
                    foreach (var pending in batch) pending.Written.TrySetResult();
                }
                catch (Exception e)
                {
                    insert?.Dispose();
                    connection?.Dispose();
                    (connection, insert) = (null, null);
                    foreach (var pending in batch) pending.Written.TrySetException(e);
                }
            }
        }
        finally
        {
            insert?.Dispose();
            connection?.Dispose();
        }
    }

    private (SqliteConnection, SqliteCommand) Open()
    {
        var connection = new SqliteConnection(_connectionString);
        try
        {
            connection.Open();
            var insert = connection.CreateCommand();
            insert.CommandText = _insertSql;
            insert.Parameters.Add("$id", SqliteType.Text);
            insert.Parameters.Add("$nr", SqliteType.Integer);
            insert.Parameters.Add("$message", SqliteType.Blob);
            insert.Parameters.Add("$manifest", SqliteType.Text);
            insert.Parameters.Add("$serializer", SqliteType.Integer);
            insert.Parameters.Add("$writer", SqliteType.Text);
            insert.Parameters.Add("$created", SqliteType.Integer);
            return (connection, insert);
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }
}
